// A small HTTP/1.1 server in C++17 that restarts gracefully on SIGUSR2.
//
// Built and run as README.md's C++ quick start is, with this file in place of
// examples/cpp/quickstart.cpp.
//
// Every GET and POST gets 200 with X-Pid, X-Generation and X-Version. A
// thread per connection; the main thread accepts (and with it adopts what the
// previous generation hands over) until a successor serves. Then each
// connection finishes what its client sent and, idle, is handed to the
// successor (no connection is closed by a restart; where the successor takes
// none, it answers its next request with "Connection: close"); then the
// shutdown hooks run.
#include <algorithm>
#include <cctype>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grestart.hpp"

#ifndef APP_VERSION
#define APP_VERSION "1"
#endif

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> draining{false};
std::atomic<unsigned long long> served{0};

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

bool send_all(int fd, const std::string &data) {
    for (size_t sent = 0; sent < data.size();) {
        ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        sent += static_cast<size_t>(n);
    }
    return true;
}

/// Answers one request head; returns false when the connection must close after it.
bool answer(int fd, const std::string &head) {
    std::string h = lower(head);
    std::string line = h.substr(0, h.find("\r\n"));
    bool http10 = line.size() >= 8 && line.compare(line.size() - 8, 8, "http/1.0") == 0;
    std::string connection;
    if (auto at = h.find("\r\nconnection:"); at != std::string::npos) {
        auto start = h.find_first_not_of(" \t", at + 13);
        connection = h.substr(start, h.find("\r\n", start) - start);
    }
    bool is_get = h.rfind("get ", 0) == 0 || h.rfind("post ", 0) == 0; // both are served
    bool close = (draining && !grestart::successor_adopts()) || !is_get || (http10 ? connection != "keep-alive" : connection == "close");
    std::string pid = std::to_string(::getpid()), generation = std::to_string(grestart::generation());
    std::string body =
        is_get ? "served by pid " + pid + " generation " + generation + "\n" : "only GET and POST are served here\n";
    std::string response = std::string("HTTP/1.1 ") + (is_get ? "200 OK" : "405 Method Not Allowed") +
                           "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
                           "\r\nX-Pid: " + pid + "\r\nX-Generation: " + generation + "\r\nX-Version: " APP_VERSION +
                           "\r\nConnection: " + (close ? "close" : "keep-alive") + "\r\n\r\n" + body;
    if (!send_all(fd, response)) {
        return false;
    }
    served++;
    return !close;
}

/// The length of the body a lower-cased request head announces (Content-Length).
size_t body_length(const std::string &head) {
    auto at = head.find("\r\ncontent-length:");
    return at == std::string::npos ? 0 : std::strtoul(head.c_str() + at + 17, nullptr, 10);
}

void serve(grestart::Fd connection) {
    int shutdown_fd = grestart::shutdown_fd();
    std::string buffer;
    for (;;) {
        size_t end;
        while ((end = buffer.find("\r\n\r\n")) != std::string::npos) {
            size_t whole = end + 4 + body_length(lower(buffer.substr(0, end + 4)));
            if (buffer.size() < whole) {
                break; // the body is still coming
            }
            std::string head = buffer.substr(0, end + 4);
            buffer.erase(0, whole);
            if (!answer(connection.get(), head)) {
                return;
            }
        }
        if (buffer.empty()) {
            // Between requests: wait for the next one, or for the drain.
            pollfd fds[2] = {{connection.get(), POLLIN, 0}, {shutdown_fd, POLLIN, 0}};
            while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
            }
            if (fds[1].revents & POLLIN) {
                if (grestart::hand_over(connection.get(), "http")) {
                    return; // closing our fd closes nothing: the successor serves it
                }
                // No successor takes connections: close as before.
                pollfd idle{connection.get(), POLLIN, 0};
                int ms = static_cast<int>(grestart::default_idle_grace.count());
                if (::poll(&idle, 1, ms) == 0) {
                    return; // idle while draining: close it
                }
            }
        }
        char chunk[4096];
        ssize_t n = ::recv(connection.get(), chunk, sizeof chunk, 0);
        if (n > 0) {
            buffer.append(chunk, static_cast<size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return; // closed by the client, or broken
        }
        if (buffer.size() > 64 * 1024) {
            return;
        }
    }
}

/// Serves `connection` on a thread of its own; its Work counts it in flight
/// until the thread is done, so that grestart::shutdown() waits for it.
void start(grestart::Connection connection) {
    std::thread([connection = std::move(connection)]() mutable { serve(std::move(connection.fd)); }).detach();
}

/// Accepts (and with it adopts what the previous generation hands over) until a successor serves.
void accept_until_shutdown(int listener) {
    for (;;) {
        try {
            auto connection = grestart::accept(listener);
            if (!connection) {
                return; // a successor serves
            }
            start(std::move(*connection));
        } catch (const std::exception &e) {
            std::fprintf(stderr, "http_server_cpp: accept: %s\n", e.what()); // EMFILE: after a pause, again
        }
    }
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s HOST:PORT   (e.g. 127.0.0.1:8080)\n", argv[0]);
        return 2;
    }
    try {
        // The previous generation's socket, or a new one on a fresh start.
        grestart::Fd listener = grestart::listen(std::string("tcp://") + argv[1], "http");
        grestart::on_shutdown([] {
            std::fprintf(stderr, "http_server_cpp: pid %d generation %lld exiting after %llu requests\n", ::getpid(),
                         static_cast<long long>(grestart::generation()), served.load());
        });
        grestart::set_drain_deadline(std::chrono::seconds(30));
        // Before ready: the previous generation then hands us its idle connections.
        grestart::adopt_fd();
        sockaddr_in bound{};
        socklen_t length = sizeof bound;
        ::getsockname(listener.get(), reinterpret_cast<sockaddr *>(&bound), &length);
        char host[INET_ADDRSTRLEN] = "?";
        ::inet_ntop(AF_INET, &bound.sin_addr, host, sizeof host);
        std::printf("http_server_cpp: pid %d generation %lld version %s listening on %s:%d\n", ::getpid(),
                    static_cast<long long>(grestart::generation()), APP_VERSION, host, ntohs(bound.sin_port));
        std::fflush(stdout);
        grestart::ready();

        accept_until_shutdown(listener.get());
        listener.reset(); // our copy; the successor accepts what is still queued
        draining = true;
        grestart::shutdown(); // waits for every connection's Work, then runs the hooks
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "http_server_cpp: %s\n", e.what());
        return 1;
    }
}
