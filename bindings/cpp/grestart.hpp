// grestart.hpp: header-only C++17 wrapper over the grestart C ABI.
//
//   #include <grestart.hpp>      // built as README.md's C++ quick start shows
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

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <unistd.h>

#include "grestart.h"

namespace grestart {

/// The header's defaults (see GR_DEFAULT_READY_TIMEOUT_MS and GR_DEFAULT_IDLE_GRACE_MS there).
inline constexpr std::chrono::milliseconds default_ready_timeout{GR_DEFAULT_READY_TIMEOUT_MS};
inline constexpr std::chrono::milliseconds default_idle_grace{GR_DEFAULT_IDLE_GRACE_MS};

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

/// A wait in milliseconds for the C ABI's `int`: negative waits nothing, more
/// than INT_MAX (24 days) waits INT_MAX, never the C ABI's "forever" (-1).
inline int wait_ms(std::chrono::milliseconds timeout) noexcept {
    if (timeout.count() < 0) {
        return 0;
    }
    return static_cast<int>(std::min<std::chrono::milliseconds::rep>(timeout.count(), INT_MAX));
}

/// A setting in milliseconds for the C ABI's `uint64_t`; a negative one is an error.
inline std::uint64_t setting_ms(std::chrono::milliseconds value, const char *what) {
    if (value.count() < 0) {
        throw Error(EINVAL, what);
    }
    return static_cast<std::uint64_t>(value.count());
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

/// In a successor, the socket registered as `name` by the previous generation;
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
        // Read the failure before the hook's destructor may touch errno.
        Error failure(errno, gr_last_error());
        delete owned;
        throw failure;
    }
}

/// Makes `signo` the restart signal (default SIGUSR2).
inline void set_signal(int signo) { detail::check(gr_set_signal(signo)); }

/// Makes `signo` the stop signal (0: none): it begins the drain, as a hand-over
/// does (see gr_set_stop_signal).
inline void set_stop_signal(int signo) { detail::check(gr_set_stop_signal(signo)); }

/// This process serves; in a successor the previous generation then drains.
inline void ready() { detail::check(gr_ready()); }

/// Restarts now and waits: returns the new generation's pid once it is ready, throws when it failed.
inline int restart() { return detail::check(gr_restart()); }

/// Readable when this process must drain; owned by grestart (never read or close it).
inline int shutdown_fd() { return detail::check(gr_shutdown_fd()); }

/// Blocks until this process must drain (true) or `timeout` passes (false);
/// no timeout waits as long as it takes, a negative one not at all.
inline bool wait_shutdown(std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    int ms = timeout ? detail::wait_ms(*timeout) : -1;
    return detail::check(gr_wait_shutdown(ms)) == 1;
}

/// Work in flight while this object lives: shutdown() waits for it. A
/// default-made Work counts one more piece of work. Move-only.
class Work {
public:
    Work() { detail::check(gr_work_begin()); }
    Work(Work &&other) noexcept : active_(std::exchange(other.active_, false)) {}
    Work &operator=(Work &&other) noexcept {
        if (this != &other) {
            end();
            active_ = std::exchange(other.active_, false);
        }
        return *this;
    }
    Work(const Work &) = delete;
    Work &operator=(const Work &) = delete;
    ~Work() { end(); }

private:
    friend struct Connection;
    struct AlreadyCounted {};
    /// Takes over a count gr_accept or gr_adopt_counted already made.
    explicit Work(AlreadyCounted) noexcept {}
    void end() noexcept {
        if (std::exchange(active_, false)) {
            gr_work_end();
        }
    }
    bool active_ = true;
};

/// A connection from accept() or adopt_counted(): it counts as work in flight until destroyed,
/// and its fd is closed first.
struct Connection {
    Work work;
    Fd fd;
    explicit Connection(int accepted) noexcept : work(Work::AlreadyCounted{}), fd(accepted) {}
    /// A connection accepted some other way, counted by `counted`.
    Connection(Work counted, Fd connection) noexcept : work(std::move(counted)), fd(std::move(connection)) {}
};

/// Waits for a connection on `listener` and accepts it; std::nullopt once this
/// process must drain (a successor serves), so an accept loop ends.
inline std::optional<Connection> accept(int listener) {
    int fd = gr_accept(listener);
    if (fd < 0 && errno == ESHUTDOWN) {
        return std::nullopt;
    }
    return Connection(detail::check(fd));
}

/// In a draining process, hands the idle connection `fd`, accepted on the
/// listener `listener` (empty: the one whose address it was accepted on), to
/// the successor, which serves it next. Returns true
/// when it did: then close your fd (that closes nothing: grestart holds the
/// connection until the successor does, at the latest at exit); false when no successor takes connections: close it as
/// you would without grestart. Throws on bad arguments.
inline bool hand_over(int fd, const std::string &listener = "") {
    if (gr_hand_over(fd, listener.empty() ? nullptr : listener.c_str()) == 0) {
        return true;
    }
    if (errno == ESRCH) {
        return false;
    }
    detail::fail();
}

/// Whether a ready successor takes the connections handed to it now: a
/// draining server then keeps an idle connection for hand_over() rather than
/// answering `Connection: close` (gr_successor_adopts).
inline bool successor_adopts() { return detail::check(gr_successor_adopts()) == 1; }

/// Readable exactly while no work is in flight in this process; owned by
/// grestart: poll it, never read or close it (gr_idle_fd).
inline int idle_fd() { return detail::check(gr_idle_fd()); }

/// Readable while connections handed over by the previous generation wait for
/// adopt(); owned by grestart. Asking for it says this process adopts them:
/// ask before ready().
inline int adopt_fd() { return detail::check(gr_adopt_fd()); }

/// A connection handed over by the previous generation.
struct Adopted {
    Fd fd;
    /// The listener it was accepted on.
    std::string listener;
};

/// The next connection handed over, waiting up to `timeout` (none: as long as
/// it takes; the default: not at all); std::nullopt when none came in time.
inline std::optional<Adopted> adopt(std::optional<std::chrono::milliseconds> timeout = std::chrono::milliseconds(0)) {
    char listener[GR_NAME_MAX + 1]; // and its NUL
    int fd = gr_adopt(listener, sizeof listener, timeout ? detail::wait_ms(*timeout) : -1);
    if (fd < 0 && errno == EAGAIN) {
        return std::nullopt;
    }
    return Adopted{Fd(detail::check(fd)), listener};
}

/// adopt(), and the connection counts as work in flight until the Connection
/// is destroyed, as accept()'s do: for a thread per connection that lets
/// shutdown() wait for it (an event loop keeping its own count uses adopt()).
inline std::optional<Connection>
adopt_counted(std::optional<std::chrono::milliseconds> timeout = std::chrono::milliseconds(0)) {
    int fd = gr_adopt_counted(nullptr, 0, timeout ? detail::wait_ms(*timeout) : -1);
    if (fd < 0 && errno == EAGAIN) {
        return std::nullopt;
    }
    return Connection(detail::check(fd));
}

/// Drains if not already, waits for the work in flight (every Connection and
/// Work destroyed), then runs the shutdown hooks, once.
inline void shutdown() { detail::check(gr_shutdown()); }

/// 1 for a fresh start, one more with every hand-over.
inline std::int64_t generation() {
    std::int64_t g = gr_generation();
    if (g < 0) {
        detail::fail();
    }
    return g;
}

/// How long a successor may take to become ready (default
/// default_ready_timeout); zero or negative throws Error(EINVAL).
inline void set_ready_timeout(std::chrono::milliseconds timeout) {
    detail::check(gr_set_ready_timeout_ms(detail::setting_ms(timeout, "the ready timeout is negative")));
}

/// After this long draining, run the hooks and exit anyway (zero: no deadline,
/// as in every language); negative throws Error(EINVAL).
inline void set_drain_deadline(std::chrono::milliseconds deadline) {
    detail::check(gr_set_drain_deadline_ms(detail::setting_ms(deadline, "the drain deadline is negative")));
}

/// How long this generation asks grestart run to keep it on probation after
/// it took over (zero: none; never called: the launcher's --probation);
/// negative throws Error(EINVAL). See gr_set_probation_ms.
inline void set_probation(std::chrono::milliseconds probation) {
    detail::check(gr_set_probation_ms(detail::setting_ms(probation, "the probation is negative")));
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

/// grestart's log levels, the header's GR_LOG_* values.
enum class Level : int {
    off = GR_LOG_OFF,
    error = GR_LOG_ERROR,
    warn = GR_LOG_WARN,
    info = GR_LOG_INFO,
    debug = GR_LOG_DEBUG,
};

/// Logs up to `level`; the default is GRESTART_LOG, else Level::info.
inline void set_log_level(Level level) { detail::check(gr_set_log_level(static_cast<int>(level))); }

/// A destination for grestart's log lines; called from any thread, concurrently.
using Logger = std::function<void(Level, std::string_view)>;

namespace detail {
inline void run_logger(int level, const char *line, void *arg) noexcept {
    try {
        (*static_cast<Logger *>(arg))(static_cast<Level>(level), line);
    } catch (...) {
        std::fprintf(stderr, "grestart: the logger threw; line: %s\n", line);
    }
}
} // namespace detail

/// Sends grestart's log lines to `logger` instead of stderr (an empty one:
/// back to stderr). A logger once set stays alive until the process exits:
/// another thread may be calling it while it is replaced.
inline void set_logger(Logger logger) {
    if (!logger) {
        detail::check(gr_set_log_callback(nullptr, nullptr));
        return;
    }
    auto *owned = new Logger(std::move(logger));
    detail::check(gr_set_log_callback(detail::run_logger, owned));
}

/// The library's version, e.g. "0.1.0".
inline std::string version() { return gr_version(); }

} // namespace grestart

#endif // GRESTART_HPP
