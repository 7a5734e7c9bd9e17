// grestart.hpp: header-only C++17 wrapper over the grestart C ABI.
//
//   #include <grestart.hpp>      // g++ -std=c++17 -Iinclude -Ibindings/cpp ... -lgrestart
//
//   grestart::Fd listener = grestart::listen("tcp://127.0.0.1:8080");
//   grestart::on_shutdown([] { std::puts("bye"); });
//   grestart::ready();
//
// Errors are thrown as std::system_error carrying the errno and grestart's
// message. Shutdown hooks are std::function; an exception escaping a hook is
// caught at the C boundary (it never unwinds into the library) and reported on
// stderr. Every function may be called from any thread.
#ifndef GRESTART_HPP
#define GRESTART_HPP

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <unistd.h>

#include "grestart.h"

namespace grestart {

/// Thrown for every failure: code() holds the errno, what() grestart's message.
class Error : public std::system_error {
public:
    Error(int errno_value, const char *message)
        : std::system_error(errno_value, std::generic_category(), message) {}
};

namespace detail {
/// Throws the current failure of the calling thread as an Error.
[[noreturn]] inline void fail() {
    int errno_value = errno;
    throw Error(errno_value, gr_last_error());
}

inline int check(int result) {
    if (result < 0) {
        fail();
    }
    return result;
}

/// The C side of a std::function hook: catches everything at the boundary.
inline void run_hook(void *arg) noexcept {
    auto *hook = static_cast<std::function<void()> *>(arg);
    try {
        (*hook)();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "grestart: a shutdown hook threw: %s\n", e.what());
    } catch (...) {
        std::fprintf(stderr, "grestart: a shutdown hook threw a non-exception\n");
    }
}
} // namespace detail

/// A file descriptor this object owns and closes: move-only, like std::unique_ptr.
class Fd {
public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd &&other) noexcept : fd_(other.release()) {}
    Fd &operator=(Fd &&other) noexcept {
        if (this != &other) {
            reset(other.release());
        }
        return *this;
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    /// Gives up ownership without closing.
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// Hands the listening socket `fd` (still the caller's) to every future
/// successor under `name`.
inline void register_listener(int fd, const std::string &name) {
    detail::check(gr_register_listener(fd, name.c_str()));
}

/// In an heir, the socket registered as `name` by the previous generation;
/// std::nullopt on a fresh start.
inline std::optional<Fd> inherit_listener(const std::string &name) {
    int fd = gr_inherit_listener(name.c_str());
    if (fd < 0 && errno == ENOENT) {
        return std::nullopt;
    }
    return Fd(detail::check(fd));
}

/// Inherit-or-listen: "tcp://HOST:PORT", "udp://HOST:PORT", "unix:/path".
inline Fd listen(const std::string &address, const std::string &name = "") {
    return Fd(detail::check(gr_listen(address.c_str(), name.empty() ? nullptr : name.c_str())));
}

/// Runs `hook` once at shutdown (hooks run in reverse order of registration).
inline void on_shutdown(std::function<void()> hook) {
    // Owned until the process exits: the library may call it at any time until then.
    auto *owned = new std::function<void()>(std::move(hook));
    if (gr_on_shutdown(detail::run_hook, owned) < 0) {
        delete owned;
        detail::fail();
    }
}

/// Makes `signo` the restart signal (default SIGUSR2).
inline void set_signal(int signo) { detail::check(gr_set_signal(signo)); }

/// This process serves; in an heir the previous generation then drains.
inline void ready() { detail::check(gr_ready()); }

/// Restarts now and waits: returns once the successor is ready, throws when it failed.
inline void restart() { detail::check(gr_restart()); }

/// Readable when this process must drain; owned by grestart (never read or close it).
inline int shutdown_fd() { return detail::check(gr_shutdown_fd()); }

/// Blocks until this process must drain (true) or `timeout` passes (false).
inline bool wait_shutdown(std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    int ms = timeout ? static_cast<int>(timeout->count()) : -1;
    return detail::check(gr_wait_shutdown(ms)) == 1;
}

/// Drains if not already, then runs the shutdown hooks (once).
inline void shutdown() { detail::check(gr_shutdown()); }

/// 1 for a fresh start, one more with every hand-over.
inline std::int64_t generation() {
    std::int64_t g = gr_generation();
    if (g < 0) {
        detail::fail();
    }
    return g;
}

inline void set_ready_timeout(std::chrono::milliseconds timeout) {
    detail::check(gr_set_ready_timeout_ms(static_cast<std::uint64_t>(timeout.count())));
}

/// After this long draining, run the hooks and exit anyway (zero: no deadline).
inline void set_drain_deadline(std::chrono::milliseconds deadline) {
    detail::check(gr_set_drain_deadline_ms(static_cast<std::uint64_t>(deadline.count())));
}

inline void set_pid_file(const std::string &path) { detail::check(gr_set_pid_file(path.c_str())); }

/// Starts successors from `path` with `argv` (empty: this process's own arguments).
inline void set_executable(const std::string &path, const std::vector<std::string> &argv = {}) {
    std::vector<const char *> c_argv;
    for (const auto &arg : argv) {
        c_argv.push_back(arg.c_str());
    }
    c_argv.push_back(nullptr);
    detail::check(gr_set_executable(path.c_str(), argv.empty() ? nullptr : c_argv.data()));
}

inline void set_log_level(int level) { detail::check(gr_set_log_level(level)); }

/// The library's version, e.g. "0.1.0".
inline std::string version() { return gr_version(); }

} // namespace grestart

#endif // GRESTART_HPP
