// The simulated board: a Verilated design whose UART pins are a TCP socket on 127.0.0.1.
//
// The design is the module `top` (class Vtop) with the ports clk, rst, uart_rx (into the
// design), uart_tx (out of it) and, when built with -DHAS_LEDS=1, leds. The UART is 8N1, LSB
// first, idle high, `--divisor` clock cycles a bit. Built and started by mmfree.sim.simboard.
//
//   simboard --port N --divisor D [--reset-cycles R]
//
// After R cycles of reset it listens on 127.0.0.1:N (0: the OS picks) and prints one line,
// `LISTENING <port>`. One client at a time: the bytes it sends are serialized onto uart_rx back
// to back; the bytes the design sends on uart_tx go back to it. A second client is accepted and
// closed at once. When the client leaves, its bytes not yet sent to the design are dropped and
// the next client is accepted. With no client and uart_tx idle for more than 2,000,000 cycles,
// the simulation waits for a client (simulated time stops; no CPU is used).
//
// Standard input carries commands from the parent, one a line; each reply is one line:
//   reset   -> rst high for R cycles, the queue to the design cleared; `OK reset` after it
//   cycles  -> `CYCLES <n>` (clock cycles simulated so far)
//   stats   -> `STATS cycles=<n> to_device=<n> from_device=<n> framing_errors=<n>
//               dropped_to_device=<n> dropped_from_device=<n> burst_start=<cycle>
//               last_from_device=<cycle>` (see SimBoard.stats)
//   leds    -> `LEDS <n>` (with HAS_LEDS; else `ERROR no leds`)
//   quit    -> exit 0
// End of standard input (the parent died), SIGTERM and SIGINT end the simulation, exit 0.
// Bad arguments exit 2, socket errors 3; messages go to standard error.

#include "Vtop.h"
#include "verilated.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstddef>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

// Cycles between two looks at the socket and standard input.
constexpr int POLL_INTERVAL = 128;
// With no client, and uart_tx idle this long, wait for a client without simulating.
constexpr uint64_t IDLE_SLEEP_CYCLES = 2000000;
// Bytes read from the client are not read further while this many wait for the design.
constexpr size_t TO_DEVICE_LIMIT = 1 << 16;
// Bytes from the design that the client has not taken: above this the simulation waits.
constexpr size_t FROM_DEVICE_LIMIT = 1 << 20;

volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

[[noreturn]] void usage(const char* message) {
    std::fprintf(stderr, "simboard: %s\n"
                 "usage: simboard --port N --divisor D [--reset-cycles R]\n", message);
    std::exit(2);
}

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "simboard: %s: %s\n", what, std::strerror(errno));
    std::exit(3);
}

uint64_t parse_number(const char* option, const char* text, uint64_t low, uint64_t high) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || value < low || value > high) {
        std::string message = std::string(option) + " must be a number from " +
                              std::to_string(low) + " to " + std::to_string(high) + ", not '" +
                              text + "'";
        usage(message.c_str());
    }
    return value;
}

void reply(const char* format, unsigned long long value) {
    std::printf(format, value);
    std::fflush(stdout);
}

void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) fail("fcntl");
}

// A byte queue: append at the end, take from the front; compact() now and then keeps a queue
// that never drains from growing.
struct ByteQueue {
    std::vector<uint8_t> data;
    size_t head = 0;

    size_t size() const { return data.size() - head; }
    bool empty() const { return head == data.size(); }
    void clear() { data.clear(); head = 0; }
    uint8_t pop() {
        uint8_t byte = data[head++];
        if (head == data.size()) clear();
        return byte;
    }
    void consume(size_t n) {
        head += n;
        if (head == data.size()) clear();
    }
    void compact() {
        if (head >= 4096 && head >= size()) {
            data.erase(data.begin(), data.begin() + std::ptrdiff_t(head));
            head = 0;
        }
    }
};

class Board {
public:
    Board(uint64_t divisor, uint64_t reset_cycles)
        : divisor_(divisor), reset_cycles_(reset_cycles) {
        context_ = std::make_unique<VerilatedContext>();
        top_ = std::make_unique<Vtop>(context_.get());
        top_->clk = 0;
        top_->rst = 1;
        top_->uart_rx = 1;
        top_->eval();
    }

    ~Board() { top_->final(); }

    int run(uint16_t port);

private:
    // --- the clock loop -------------------------------------------------------------------

    // POLL_INTERVAL clock cycles: inputs before the rising edge, outputs sampled after it.
    void simulate() {
        Vtop* top = top_.get();
        for (int i = 0; i < POLL_INTERVAL; ++i) {
            if (reset_left_ == 0) drive_uart_rx(top);
            top->clk = 1;
            top->eval();
            sample_uart_tx(top->uart_tx);
            top->clk = 0;
            top->eval();
            ++cycles_;
            if (reset_left_ && --reset_left_ == 0) {  // rst was high at reset_cycles edges
                top->rst = 0;
                reset_done_ = true;
            }
        }
    }

    // Host -> device: frames of 10 bits (start, 8 data LSB first, stop), each bit `divisor`
    // cycles, the next queued byte right after the stop bit.
    void drive_uart_rx(Vtop* top) {
        if (bit_left_ > 1) {
            --bit_left_;
            return;
        }
        if (frame_bit_ < 9) {
            ++frame_bit_;
        } else if (!to_device_.empty()) {
            frame_ = 0x200u | (uint32_t(to_device_.pop()) << 1);
            frame_bit_ = 0;
            ++stats_to_device_;
            if (driver_idle_) {
                driver_idle_ = false;
                burst_start_ = cycles_;
            }
        } else {
            top->uart_rx = 1;
            bit_left_ = 1;  // idle: look at the queue again next cycle
            driver_idle_ = true;
            return;
        }
        top->uart_rx = (frame_ >> frame_bit_) & 1;
        bit_left_ = divisor_;
    }

    // Device -> host: a falling edge while idle starts a byte; each bit is sampled in its
    // middle; a stop bit of 0 is a framing error.
    void sample_uart_tx(uint8_t level) {
        if (level == 0) last_tx_low_ = cycles_;
        if (sample_bit_ < 0) {
            if (level == 0 && tx_previous_ == 1) {
                sample_bit_ = 0;
                sample_left_ = divisor_ / 2;
            }
        } else if (--sample_left_ == 0) {
            if (sample_bit_ == 0) {
                if (level) {
                    sample_bit_ = -1;  // a glitch, not a start bit
                } else {
                    sample_bit_ = 1;
                    sample_byte_ = 0;
                    sample_left_ = divisor_;
                }
            } else if (sample_bit_ <= 8) {
                sample_byte_ |= uint8_t(level << (sample_bit_ - 1));
                ++sample_bit_;
                sample_left_ = divisor_;
            } else {
                if (!level) {
                    ++stats_framing_errors_;
                } else {
                    last_from_device_ = cycles_;
                    ++stats_from_device_;
                    if (client_ >= 0) {
                        from_device_.data.push_back(sample_byte_);
                    } else {
                        ++stats_dropped_from_device_;
                    }
                }
                sample_bit_ = -1;
            }
        }
        tx_previous_ = level;
    }

    void start_reset() {
        reset_left_ = reset_cycles_;
        top_->rst = 1;
        top_->uart_rx = 1;
        stats_dropped_to_device_ += to_device_.size();
        to_device_.clear();
        frame_bit_ = 9;
        bit_left_ = 1;
        driver_idle_ = true;
        sample_bit_ = -1;
    }

    // --- sockets and commands -------------------------------------------------------------

    void listen_on(uint16_t port);
    bool service(bool may_sleep);
    void accept_client();
    void drop_client();
    bool read_client();
    bool write_client();
    bool read_commands();
    bool command(const std::string& line);

    std::unique_ptr<VerilatedContext> context_;
    std::unique_ptr<Vtop> top_;
    const uint64_t divisor_;
    const uint64_t reset_cycles_;
    uint64_t cycles_ = 0;
    uint64_t reset_left_ = 0;
    bool reset_done_ = false;
    bool reset_reply_ = false;  // `OK reset` is owed when the reset ends

    ByteQueue to_device_;
    uint32_t frame_ = 0;
    int frame_bit_ = 9;  // 0..9 in a frame, 9 also when idle
    uint64_t bit_left_ = 1;
    bool driver_idle_ = true;
    uint64_t burst_start_ = 0;  // the cycle the latest run of back-to-back bytes began

    ByteQueue from_device_;
    uint8_t tx_previous_ = 1;
    int sample_bit_ = -1;  // -1 idle, 0 start, 1..8 data, 9 stop
    uint64_t sample_left_ = 0;
    uint8_t sample_byte_ = 0;
    uint64_t last_tx_low_ = 0;
    uint64_t last_from_device_ = 0;  // the cycle the latest byte's stop bit was sampled

    int listener_ = -1;
    int client_ = -1;
    std::string stdin_line_;

    uint64_t stats_to_device_ = 0;
    uint64_t stats_from_device_ = 0;
    uint64_t stats_framing_errors_ = 0;
    uint64_t stats_dropped_to_device_ = 0;
    uint64_t stats_dropped_from_device_ = 0;
};

int Board::run(uint16_t port) {
    start_reset();
    while (!reset_done_) simulate();
    reset_done_ = false;
    listen_on(port);
    while (!g_stop) {
        bool idle = client_ < 0 && frame_bit_ == 9 && to_device_.empty() && sample_bit_ < 0 &&
                    reset_left_ == 0 && cycles_ - last_tx_low_ > IDLE_SLEEP_CYCLES;
        if (!service(idle)) break;
        simulate();
        if (reset_done_) {
            reset_done_ = false;
            if (reset_reply_) {
                reset_reply_ = false;
                std::printf("OK reset\n");
                std::fflush(stdout);
            }
        }
    }
    if (client_ >= 0) {
        write_client();
        close(client_);
    }
    close(listener_);
    return 0;
}

void Board::listen_on(uint16_t port) {
    listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener_ < 0) fail("socket");
    int one = 1;
    setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
        std::fprintf(stderr, "simboard: cannot listen on 127.0.0.1:%u: %s\n", unsigned(port),
                     std::strerror(errno));
        std::exit(3);
    }
    if (listen(listener_, 4) < 0) fail("listen");
    socklen_t length = sizeof address;
    if (getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) < 0)
        fail("getsockname");
    set_nonblocking(listener_);
    std::printf("LISTENING %u\n", unsigned(ntohs(address.sin_port)));
    std::fflush(stdout);
}

// One look at standard input and the sockets; with `may_sleep`, wait until a client comes or a
// command arrives. Returns false when the simulation is to end.
bool Board::service(bool may_sleep) {
    for (;;) {
        // While the client does not take the design's bytes, the simulation waits for it.
        bool backlog = client_ >= 0 && from_device_.size() > FROM_DEVICE_LIMIT;
        pollfd fds[3] = {{STDIN_FILENO, POLLIN, 0}, {listener_, POLLIN, 0}, {client_, 0, 0}};
        nfds_t count = 2;
        if (client_ >= 0) {
            fds[2].events = short((to_device_.size() < TO_DEVICE_LIMIT ? POLLIN : 0) |
                                  (from_device_.empty() ? 0 : POLLOUT));
            count = 3;
        }
        int ready = poll(fds, count, may_sleep || backlog ? -1 : 0);
        if (g_stop) return false;
        if (ready < 0) {
            if (errno == EINTR) continue;
            fail("poll");
        }
        if (fds[0].revents && !read_commands()) return false;
        if (client_ >= 0 && fds[2].revents) {
            short events = fds[2].revents;
            if (events & (POLLIN | POLLHUP | POLLERR) && !read_client()) {
                drop_client();
            } else if (events & POLLOUT && !write_client()) {
                drop_client();
            }
        }
        if (fds[1].revents & POLLIN) accept_client();
        to_device_.compact();
        from_device_.compact();
        if (!backlog || client_ < 0 || from_device_.size() <= FROM_DEVICE_LIMIT) return true;
    }
}

void Board::accept_client() {
    int fd = accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED && errno != EINTR)
            std::fprintf(stderr, "simboard: accept: %s\n", std::strerror(errno));
        return;
    }
    if (client_ >= 0) {
        std::fprintf(stderr, "simboard: refused a second client (one at a time)\n");
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    client_ = fd;
}

void Board::drop_client() {
    close(client_);
    client_ = -1;
    stats_dropped_to_device_ += to_device_.size();
    to_device_.clear();
    stats_dropped_from_device_ += from_device_.size();
    from_device_.clear();
}

// Returns false on end of stream or an error.
bool Board::read_client() {
    uint8_t buffer[65536];
    while (to_device_.size() < TO_DEVICE_LIMIT) {
        ssize_t n = recv(client_, buffer, sizeof buffer, 0);
        if (n > 0) {
            to_device_.data.insert(to_device_.data.end(), buffer, buffer + n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n < 0 && errno == EINTR) continue;
        return false;
    }
    return true;
}

// Returns false on an error.
bool Board::write_client() {
    while (!from_device_.empty()) {
        ssize_t n = send(client_, from_device_.data.data() + from_device_.head,
                         from_device_.size(), MSG_NOSIGNAL);
        if (n > 0) {
            from_device_.consume(size_t(n));
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n < 0 && errno == EINTR) continue;
        return false;
    }
    return true;
}

// Returns false when the simulation is to end (end of input, `quit`).
bool Board::read_commands() {
    // One read: poll() said there is something, so it does not block (standard input is left
    // blocking, as a terminal's must be).
    char buffer[4096];
    ssize_t n;
    do {
        n = read(STDIN_FILENO, buffer, sizeof buffer);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    stdin_line_.append(buffer, size_t(n));
    size_t end;
    while ((end = stdin_line_.find('\n')) != std::string::npos) {
        std::string line = stdin_line_.substr(0, end);
        stdin_line_.erase(0, end + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!command(line)) return false;
    }
    if (stdin_line_.size() > 4096) stdin_line_.clear();
    return true;
}

bool Board::command(const std::string& line) {
    if (line == "quit") return false;
    if (line == "reset") {
        start_reset();
        reset_reply_ = true;
    } else if (line == "cycles") {
        reply("CYCLES %llu\n", cycles_);
    } else if (line == "stats") {
        std::printf("STATS cycles=%llu to_device=%llu from_device=%llu framing_errors=%llu "
                    "dropped_to_device=%llu dropped_from_device=%llu burst_start=%llu "
                    "last_from_device=%llu\n",
                    (unsigned long long)cycles_, (unsigned long long)stats_to_device_,
                    (unsigned long long)stats_from_device_,
                    (unsigned long long)stats_framing_errors_,
                    (unsigned long long)stats_dropped_to_device_,
                    (unsigned long long)stats_dropped_from_device_,
                    (unsigned long long)burst_start_, (unsigned long long)last_from_device_);
        std::fflush(stdout);
    } else if (line == "leds") {
#ifdef HAS_LEDS
        reply("LEDS %llu\n", (unsigned long long)top_->leds);
#else
        std::printf("ERROR no leds\n");
        std::fflush(stdout);
#endif
    } else {
        std::printf("ERROR unknown command '%s'\n", line.c_str());
        std::fflush(stdout);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    long long port = -1;
    uint64_t divisor = 0;
    uint64_t reset_cycles = 16;
    for (int i = 1; i < argc; ++i) {
        std::string option = argv[i];
        if (i + 1 >= argc) usage((option + " needs a value").c_str());
        const char* value = argv[++i];
        if (option == "--port") {
            port = (long long)parse_number("--port", value, 0, 65535);
        } else if (option == "--divisor") {
            divisor = parse_number("--divisor", value, 2, 1u << 30);
        } else if (option == "--reset-cycles") {
            reset_cycles = parse_number("--reset-cycles", value, 1, 1u << 30);
        } else {
            usage(("unknown option " + option).c_str());
        }
    }
    if (port < 0) usage("--port is required");
    if (divisor == 0) usage("--divisor is required");

    struct sigaction action{};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: a signal ends a wait in poll()
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    Board board(divisor, reset_cycles);
    return board.run(uint16_t(port));
}
