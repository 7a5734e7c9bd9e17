// An HTTP/1.1 server on standalone Asio (Debian: libasio-dev) that restarts
// gracefully on SIGUSR2 through grestart.
//
// Built and run as README.md's C++ quick start is, with this file in place of
// examples/cpp/quickstart.cpp.
//
// Every GET (and POST) gets 200 with X-Pid, X-Generation and X-Version. One
// io_context; what grestart adds to a plain Asio server:
//   * the acceptor adopts grestart::listen's socket (inherited or new);
//   * a stream_descriptor waits on grestart's shutdown fd; when it turns
//     readable the acceptor closes (the queue is the successor's), every
//     response says "Connection: close", and connections still idle after a
//     grace period are closed;
//   * io_context::run returns once no connection is left, and
//     grestart::shutdown runs the hooks.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <set>
#include <string>

#include <asio.hpp>

#include "grestart.hpp"

#ifndef APP_VERSION
#define APP_VERSION "1"
#endif

namespace {

using asio::ip::tcp;

struct Server;

std::string lower(std::string s) {
    for (auto &c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

/// The value of header `name` (lower case) in a lower-cased request head.
std::string header(const std::string &head, const std::string &name) {
    auto at = head.find("\r\n" + name + ":");
    if (at == std::string::npos) {
        return "";
    }
    auto from = head.find_first_not_of(' ', at + name.size() + 3);
    return head.substr(from, head.find("\r\n", from) - from);
}

class Session : public std::enable_shared_from_this<Session> {
public:
    Session(tcp::socket socket, Server &server) : socket_(std::move(socket)), server_(server) {}
    void start() { read_head(); }
    /// Closes the connection if it waits for a request and has none of it.
    void close_if_idle() {
        if (idle_ && buffer_.size() == 0) {
            asio::error_code ignored;
            socket_.close(ignored);
        }
    }

private:
    void read_head();
    void read_body(std::size_t left, bool closing);
    void respond(bool closing, const char *status = "200 OK");

    tcp::socket socket_;
    Server &server_;
    asio::streambuf buffer_;
    bool idle_ = false;
};

struct Server {
    asio::io_context io;
    tcp::acceptor acceptor{io};
    asio::posix::stream_descriptor drain{io};
    asio::steady_timer grace{io};
    std::set<std::shared_ptr<Session>> sessions;
    bool draining = false;
    unsigned long served = 0;

    void accept() {
        acceptor.async_accept([this](asio::error_code error, tcp::socket socket) {
            // An accept that completed as the drain closed the acceptor still
            // holds a client's connection: serve it.
            if (!error) {
                auto session = std::make_shared<Session>(std::move(socket), *this);
                sessions.insert(session);
                session->start();
            }
            if (acceptor.is_open()) {
                accept(); // else the drain closed it: the queue is the successor's
            }
        });
    }

    void wait_for_drain() {
        drain.async_wait(asio::posix::stream_descriptor::wait_read, [this](asio::error_code error) {
            if (error) {
                return;
            }
            draining = true;
            asio::error_code ignored;
            acceptor.close(ignored);
            if (sessions.empty()) {
                return;
            }
            grace.expires_after(grestart::default_idle_grace);
            grace.async_wait([this](asio::error_code expired) {
                if (!expired) {
                    for (auto &session : std::set<std::shared_ptr<Session>>(sessions)) {
                        session->close_if_idle();
                    }
                }
            });
        });
    }

    void ended(const std::shared_ptr<Session> &session) {
        sessions.erase(session);
        if (draining && sessions.empty()) {
            grace.cancel(); // nothing left to wait for: run() returns
        }
    }
};

void Session::read_head() {
    idle_ = true;
    asio::async_read_until(socket_, buffer_, "\r\n\r\n",
                           [self = shared_from_this()](asio::error_code error, std::size_t length) {
                               self->idle_ = false;
                               if (error) {
                                   self->server_.ended(self);
                                   return;
                               }
                               std::string head(asio::buffers_begin(self->buffer_.data()),
                                                asio::buffers_begin(self->buffer_.data()) + length);
                               self->buffer_.consume(length);
                               head = lower(head);
                               bool http10 = head.find(" http/1.0\r\n") < head.find("\r\n\r\n");
                               auto connection = header(head, "connection");
                               bool closing = http10 ? connection != "keep-alive" : connection == "close";
                               auto declared = header(head, "content-length");
                               char *end = nullptr;
                               auto body = std::strtoull(declared.c_str(), &end, 10);
                               if (*end != '\0') { // the body's end is unknown: say so, close
                                   self->respond(true, "400 Bad Request");
                                   return;
                               }
                               self->read_body(body, closing);
                           });
}

void Session::read_body(std::size_t left, bool closing) {
    auto buffered = std::min(left, buffer_.size());
    buffer_.consume(buffered);
    left -= buffered;
    if (left == 0) {
        respond(closing);
        return;
    }
    asio::async_read(socket_, buffer_, asio::transfer_at_least(1),
                     [self = shared_from_this(), left, closing](asio::error_code error, std::size_t) {
                         if (error) {
                             self->server_.ended(self);
                             return;
                         }
                         self->read_body(left, closing);
                     });
}

void Session::respond(bool closing, const char *status) {
    closing = closing || server_.draining;
    auto pid = std::to_string(::getpid());
    auto generation = std::to_string(grestart::generation());
    auto body = "served by pid " + pid + " generation " + generation + "\n";
    auto response = std::make_shared<std::string>(
        std::string("HTTP/1.1 ") + status + "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nX-Pid: " + pid + "\r\nX-Generation: " + generation + "\r\nX-Version: " APP_VERSION +
        "\r\nConnection: " + (closing ? "close" : "keep-alive") + "\r\n\r\n" + body);
    asio::async_write(socket_, asio::buffer(*response),
                      [self = shared_from_this(), response, closing](asio::error_code error, std::size_t) {
                          self->server_.served++;
                          if (error || closing) {
                              asio::error_code ignored;
                              self->socket_.shutdown(tcp::socket::shutdown_send, ignored);
                              self->server_.ended(self);
                              return;
                          }
                          self->read_head();
                      });
}

int run(const std::string &address) {
    Server server;
    // The previous generation's socket, or a new one on a fresh start.
    grestart::Fd listener = grestart::listen("tcp://" + address);
    sockaddr_storage bound{};
    socklen_t size = sizeof bound;
    ::getsockname(listener.get(), reinterpret_cast<sockaddr *>(&bound), &size);
    auto protocol = bound.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
    server.acceptor.assign(protocol, listener.release());
    server.drain.assign(::dup(grestart::shutdown_fd())); // Asio closes its own copy
    auto generation = grestart::generation();
    grestart::on_shutdown([&server, generation] {
        std::fprintf(stderr, "asio_server: pid %d generation %lld exiting after %lu requests\n", ::getpid(),
                     static_cast<long long>(generation), server.served);
    });

    auto local = server.acceptor.local_endpoint();
    auto host = local.address().to_string();
    std::printf("asio_server: pid %d generation %lld version " APP_VERSION " listening on %s:%u\n", ::getpid(),
                static_cast<long long>(generation), local.address().is_v6() ? ("[" + host + "]").c_str() : host.c_str(),
                local.port());
    std::fflush(stdout);
    server.accept();
    server.wait_for_drain();
    grestart::ready();
    server.io.run(); // until drained and every connection is closed
    grestart::shutdown();
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: asio_server HOST:PORT   (e.g. 127.0.0.1:8080)\n");
        return 2;
    }
    try {
        return run(argv[1]);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "asio_server: %s\n", e.what());
        return 1;
    }
}
