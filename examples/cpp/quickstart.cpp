// grestart's C++ quick start: a blocking, thread-per-connection HTTP server
// that restarts on SIGUSR2 without losing a request. README.md ("Quick
// start") has the commands that build and run it.
#include <grestart.hpp>

#include <cstdio>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <unistd.h>

static void answer(grestart::Connection connection) { // one request per connection
    std::string request;
    char buffer[4096];
    ssize_t n;
    while (request.find("\r\n\r\n") == std::string::npos && (n = ::read(connection.fd.get(), buffer, sizeof buffer)) > 0) {
        request.append(buffer, static_cast<size_t>(n));
    }
    std::string response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nX-Pid: " +
                           std::to_string(getpid()) + "\r\nX-Generation: " + std::to_string(grestart::generation()) +
                           "\r\n\r\n";
    if (::write(connection.fd.get(), response.data(), response.size()) < 0) {
        std::perror("quickstart: write");
    }
} // the connection closes, then stops counting as work in flight

int main(int argc, char **argv) {
    grestart::Fd listener = grestart::listen(std::string("tcp://") + (argc > 1 ? argv[1] : "127.0.0.1:8080"), "http");
    sockaddr_in bound{};
    socklen_t size = sizeof bound;
    getsockname(listener.get(), reinterpret_cast<sockaddr *>(&bound), &size);
    std::printf("quickstart: pid %d listening on %s:%d\n", getpid(), inet_ntoa(bound.sin_addr), ntohs(bound.sin_port));
    std::fflush(stdout);
    grestart::ready();                                       // the previous generation drains now
    while (auto connection = grestart::accept(listener.get())) { // until a successor serves
        std::thread(answer, std::move(*connection)).detach();
    }
    grestart::shutdown(); // waits for the connections in flight, then runs the hooks
}
