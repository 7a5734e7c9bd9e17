// The C++ wrapper from two translation units linked into one program (a
// missing `inline` would be a duplicate symbol), checking that errors arrive
// as grestart::Error with the errno, that Fd owns, and that an exception
// thrown by a hook stops at the C boundary.
#include <cerrno>
#include <climits>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "grestart.hpp"

int run_hooks_and_count();  // wrapper_b.cpp

static int failures;
#define EXPECT(cond)                                                             \
    do {                                                                         \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

/// A hook's captured state whose destructor touches errno, as closing an fd does.
struct TouchesErrno {
    ~TouchesErrno() { errno = EBADF; }
};

template <typename F>
static int errno_of(F f) {
    try {
        f();
    } catch (const grestart::Error &e) {
        std::printf("ok: %s\n", e.what());
        return e.code().value();
    }
    return 0;
}

int main() {
    EXPECT(grestart::version() == GR_VERSION);
    EXPECT(grestart::generation() == 1);
    EXPECT(errno_of([] { grestart::register_listener(-1, "web"); }) == EBADF);
    EXPECT(errno_of([] { grestart::set_signal(9); }) == EINVAL);
    EXPECT(errno_of([] { grestart::listen("nonsense"); }) == EINVAL);
    EXPECT(errno_of([] { grestart::restart(); }) == EAGAIN);
    EXPECT(!grestart::inherit_listener("web"));

    grestart::Fd listener = grestart::listen("tcp://127.0.0.1:0", "web");
    EXPECT(listener.get() >= 3);
    grestart::Fd moved = std::move(listener);
    EXPECT(!listener && moved);
    EXPECT(errno_of([] { grestart::listen("tcp://127.0.0.1:0", "web"); }) == EEXIST);
    EXPECT(!grestart::wait_shutdown(std::chrono::milliseconds(0)));
    // A negative timeout waits nothing and a huge one is capped: neither
    // becomes the C ABI's "forever" (-1).
    EXPECT(grestart::detail::wait_ms(std::chrono::milliseconds(-5)) == 0);
    EXPECT(grestart::detail::wait_ms(std::chrono::milliseconds(1LL << 40)) == INT_MAX);
    EXPECT(grestart::detail::wait_ms(std::chrono::milliseconds((1LL << 32) - 1)) == INT_MAX);
    EXPECT(grestart::detail::wait_ms(std::chrono::milliseconds(250)) == 250);
    if (grestart::detail::wait_ms(std::chrono::milliseconds(-5)) == 0) { // else it would hang
        EXPECT(!grestart::wait_shutdown(std::chrono::milliseconds(-5)));
    }
    EXPECT(errno_of([] { grestart::set_drain_deadline(std::chrono::milliseconds(-1)); }) == EINVAL);
    EXPECT(errno_of([] { grestart::set_probation(std::chrono::milliseconds(-1)); }) == EINVAL);
    EXPECT(errno_of([] { grestart::set_ready_timeout(std::chrono::milliseconds(-1)); }) == EINVAL);
    grestart::set_drain_deadline(std::chrono::milliseconds(0)); // none, as in C

    std::vector<std::pair<grestart::Level, std::string>> lines;
    std::mutex lines_lock;
    grestart::set_log_level(grestart::Level::info);
    grestart::set_logger([&](grestart::Level level, std::string_view line) {
        std::lock_guard<std::mutex> guard(lines_lock);
        lines.emplace_back(level, line);
    });
    grestart::ready();
    grestart::set_logger({});
    EXPECT(!lines.empty() && lines.back().first == grestart::Level::info &&
           lines.back().second == "ready, generation 1");
    EXPECT(run_hooks_and_count() == 3);
    EXPECT(grestart::wait_shutdown());
    EXPECT(errno_of([] { grestart::on_shutdown([] {}); }) == ESHUTDOWN);
    // The refused hook is destroyed before the throw; its errno must not win.
    EXPECT(errno_of([] { grestart::on_shutdown([t = std::make_shared<TouchesErrno>()] { (void)t; }); }) ==
           ESHUTDOWN);
    std::printf("wrapper: %d failed\n", failures);
    return failures != 0;
}
