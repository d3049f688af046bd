// The TCP communicator: host tensors between processes started torchrun-style (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT; no MPI launcher), and the rendezvous other backends bootstrap from.
//
// Rendezvous: rank 0 listens on MASTER_PORT; every other rank listens on a port of its own,
// connects to MASTER_ADDR:MASTER_PORT and says who it is (rank, world size, its port); rank 0
// checks the answers (same world size, each rank once) and sends everyone the table of addresses
// (as rank 0 saw them) and ports; then rank i connects to every rank 0 < j < i and accepts every
// j > i. The result is one socket per pair of ranks.
//
// Collectives move bytes over those sockets with poll(): all_reduce is a ring reduce-scatter
// followed by a ring all-gather (each chunk is summed in one fixed order and then copied, so every
// rank gets the same bits); reduce_scatter(_v) and all_gather(_v) are those halves; broadcast
// sends from the root to each rank; barrier is a one-element all_reduce. Every wait has the
// communicator's deadline, and a peer that closes its socket (it died) is reported at once.
//
// Every message starts with a frame saying what it belongs to (the operation, its dtype, element
// count and reduction, the communicator, the operation's number on it, the message's bytes). The
// receiver compares it with its own before reading the bytes, so ranks that called different
// collectives, or passed tensors of different sizes, stop naming both sides instead of reading
// one operation's bytes as another's.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "dist/comm_check.h"
#include "nuri/core/error.h"
#include "nuri/core/log.h"
#include "nuri/dist/communicator.h"

namespace nuri {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x6e757269;       // "nuri"
constexpr uint32_t kFrameMagic = 0x6e75666d;  // "nufm"

/// The launcher's names for a job that a rank's Hello carries, each hashed (0: not set), in this
/// order. Two ranks are of one job unless a name both have differs: a rank started without the
/// batch system's variables (over ssh) still joins.
constexpr const char* kJobKeys[] = {"NURI_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID",
                                    "PBS_JOBID", "LSB_JOBID"};
constexpr int kJobKeyCount = 5;

struct Hello {
  uint32_t magic = kMagic;
  int32_t rank = 0;
  int32_t world = 0;
  int32_t port = 0;
  uint64_t job[kJobKeyCount] = {};  ///< job_ids(): ranks of another job are turned away
};

/// Rank 0's answer to a rank it turns away, in place of the address table's first entry.
constexpr uint32_t kTurnedAway = 0x6e757278;  // "nurx"

void job_ids(uint64_t* out) {
  for (int k = 0; k < kJobKeyCount; ++k) {
    out[k] = 0;
    if (const char* v = std::getenv(kJobKeys[k]); v && *v) {
      uint64_t h = 1469598103934665603ull;  // FNV-1a
      for (const unsigned char c : std::string(v)) h = (h ^ c) * 1099511628211ull;
      out[k] = h | 1;
    }
  }
}

/// "" when a and b may be ranks of one job, else the first name that differs.
std::string job_differs(const Hello& a, const Hello& b) {
  for (int k = 0; k < kJobKeyCount; ++k) {
    if (a.job[k] != 0 && b.job[k] != 0 && a.job[k] != b.job[k]) return kJobKeys[k];
  }
  return "";
}

/// What a message belongs to; sent ahead of its bytes and compared by the receiver.
enum class Op : uint8_t { all_reduce, reduce_scatter, all_gather, broadcast, send, barrier };

const char* op_name(uint8_t op) {
  static const char* const names[] = {"all_reduce", "reduce_scatter", "all_gather",
                                      "broadcast",  "send",           "barrier"};
  return op < 6 ? names[op] : "an unknown operation";
}

struct Frame {
  uint32_t magic = kFrameMagic;
  uint8_t op = 0;
  uint8_t dtype = 0;
  uint8_t rop = 0;  ///< 0 none, 1 sum, 2 avg
  uint8_t pad = 0;
  uint32_t group = 0;  ///< a hash of the communicator's members
  uint32_t pad2 = 0;
  uint64_t seq = 0;    ///< the operation's number on the communicator (a send's: on the pair)
  uint64_t count = 0;  ///< the operation's elements
  uint64_t bytes = 0;  ///< this message's
};
static_assert(sizeof(Frame) == 40, "the frame is sent as bytes");

/// "all_reduce #7 (f32, 1024 elements, sum)"; `as` names the operation instead (a receive's
/// frame is the send's).
std::string describe_frame(const Frame& f, const char* as = nullptr) {
  std::ostringstream s;
  s << (as ? as : op_name(f.op)) << " #" << f.seq;
  if (f.op != uint8_t(Op::barrier)) {
    s << " (" << (f.dtype <= uint8_t(DType::u32) ? dtype_name(DType(f.dtype)) : "?") << ", "
      << f.count << " elements" << (f.rop == 1 ? ", sum" : f.rop == 2 ? ", avg" : "") << ")";
  }
  return s.str();
}

struct Peer {
  uint32_t ip = 0;  ///< network byte order
  int32_t port = 0;
};

std::string errno_str() { return std::strerror(errno); }

/// The sockets of one job: one per peer, shared by the world communicator and its splits.
struct Mesh {
  int rank = 0, size = 1;
  std::vector<int> fds;  ///< by world rank; -1 for this rank
  double timeout_s = 600;
  // Set by the first failure, read before every operation: the world communicator's users and
  // its splits' (the data-parallel progress thread, the training thread's tp/pp) share the mesh.
  std::atomic<bool> broken{false};
  void mark_broken(const std::string& what) {
    const std::lock_guard<std::mutex> lock(broken_mutex);
    if (!broken.exchange(true)) broken_what = what;
  }
  std::string what_broke() const {
    const std::lock_guard<std::mutex> lock(broken_mutex);
    return broken_what;
  }
  ~Mesh() {
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  }

 private:
  mutable std::mutex broken_mutex;
  std::string broken_what;
};

class Deadline {
 public:
  explicit Deadline(double s)
      : end_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(s))) {}
  bool passed() const { return Clock::now() > end_; }
  double left_s() const { return std::chrono::duration<double>(end_ - Clock::now()).count(); }
  /// Milliseconds left for poll(), at most 100 (so a signal-free poll rechecks often).
  int poll_ms() const {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end_ - Clock::now());
    return int(std::clamp<int64_t>(left.count(), 0, 100));
  }

 private:
  Clock::time_point end_;
};

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  NURI_CHECK(flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0,
             "tcp communicator: fcntl(O_NONBLOCK) failed: ", errno_str());
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/// Up to two buffers sent or received one after the other, as one stream.
struct Parts {
  char* p[2] = {nullptr, nullptr};
  size_t n[2] = {0, 0};
  size_t total() const { return n[0] + n[1]; }
};

/// A blocking-style transfer on non-blocking sockets with a deadline: sends `out` to fd_out and
/// receives `in` from fd_in at the same time (a ring step does both, and two ranks sending each
/// other large buffers first would otherwise wait on each other forever). `between` (if set)
/// runs once in's first part has arrived and out's first part has gone, before in's second part
/// is read (it may throw: the peer has this side's first part, a frame, to judge by too).
/// Returns an empty string, or what went wrong.
std::string transfer(int fd_out, const Parts& out, int fd_in, const Parts& in,
                     const Deadline& dl, int peer_out, int peer_in,
                     const std::function<void()>& between = nullptr) {
  const size_t out_n = out.total(), in_n = in.total();
  size_t sent = 0, got = 0;
  bool checked = !between;
  while (sent < out_n || got < in_n) {
    pollfd p[2];
    int n = 0, io = -1, ii = -1;
    if (sent < out_n) {
      p[n] = {fd_out, POLLOUT, 0};
      io = n++;
    }
    if (got < in_n && (checked || got < in.n[0])) {
      if (io >= 0 && fd_in == fd_out) {
        p[io].events |= POLLIN;
        ii = io;
      } else {
        p[n] = {fd_in, POLLIN, 0};
        ii = n++;
      }
    }
    if (dist::wait_interrupted()) return "interrupted";
    if (dl.passed()) {
      std::ostringstream s;
      s << "timeout (" << (sent < out_n ? "sending to rank " + std::to_string(peer_out) : "")
        << (sent < out_n && got < in_n ? ", " : "")
        << (got < in_n ? "receiving from rank " + std::to_string(peer_in) : "") << ")";
      return s.str();
    }
    const int r = ::poll(p, nfds_t(n), dl.poll_ms());
    if (r < 0) {
      if (errno == EINTR) continue;
      return "poll failed: " + errno_str();
    }
    if (ii >= 0 && (p[ii].revents & (POLLIN | POLLHUP | POLLERR))) {
      // Into the part being filled: the first whole before `between` sees it.
      const int part = got < in.n[0] ? 0 : 1;
      const size_t at = part == 0 ? got : got - in.n[0];
      const ssize_t k = ::recv(fd_in, in.p[part] + at, in.n[part] - at, 0);
      if (k == 0) {
        return "rank " + std::to_string(peer_in) + " closed the connection (it ended or died)";
      }
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return "receiving from rank " + std::to_string(peer_in) + " failed: " + errno_str();
      }
      if (k > 0) got += size_t(k);
    }
    if (io >= 0 && (p[io].revents & (POLLOUT | POLLERR | POLLHUP)) && sent < out_n) {
      iovec v[2];
      int parts = 0;
      size_t skip = sent;  // what the parts' fronts have sent already
      for (int k = 0; k < 2; ++k) {
        const size_t from = std::min(out.n[k], skip);
        skip -= from;
        if (out.n[k] > from) v[parts++] = {out.p[k] + from, out.n[k] - from};
      }
      msghdr m{};
      m.msg_iov = v;
      m.msg_iovlen = size_t(parts);
      const ssize_t k = ::sendmsg(fd_out, &m, MSG_NOSIGNAL);
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return "sending to rank " + std::to_string(peer_out) + " failed: " + errno_str() +
               " (it ended or died)";
      }
      if (k > 0) sent += size_t(k);
    }
    if (!checked && got >= in.n[0] && sent >= out.n[0]) {
      checked = true;
      between();
    }
  }
  return "";
}

/// One buffer each way (the rendezvous).
std::string transfer(int fd_out, const void* out, size_t out_n, int fd_in, void* in, size_t in_n,
                     const Deadline& dl, int peer_out, int peer_in) {
  Parts o, i;
  o.p[0] = static_cast<char*>(const_cast<void*>(out));
  o.n[0] = out_n;
  i.p[0] = static_cast<char*>(in);
  i.n[0] = in_n;
  return transfer(fd_out, o, fd_in, i, dl, peer_out, peer_in);
}

/// Adds src into dst elementwise (f32, or bf16 through f32 with rounding after each addition).
void accumulate(DType dt, void* dst, const void* src, int64_t n) {
  if (dt == DType::f32) {
    auto* d = static_cast<float*>(dst);
    const auto* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
  } else {
    auto* d = static_cast<bf16_t*>(dst);
    const auto* s = static_cast<const bf16_t*>(src);
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(bf16_to_f32(d[i]) + bf16_to_f32(s[i]));
  }
}

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(std::shared_ptr<Mesh> mesh, std::vector<int> members)
      : mesh_(std::move(mesh)), members_(std::move(members)) {
    timeout_s_ = mesh_->timeout_s;
    for (size_t i = 0; i < members_.size(); ++i)
      if (members_[i] == mesh_->rank) rank_ = int(i);
    uint32_t h = 2166136261u;  // FNV-1a over the members
    for (int m : members_) h = (h ^ uint32_t(m)) * 16777619u;
    group_ = h;
    sent_.assign(members_.size(), 0);
    received_.assign(members_.size(), 0);
  }

  int rank() const override { return rank_; }
  int size() const override { return int(members_.size()); }
  std::string backend_name() const override { return "tcp"; }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    dist::check_tensor("all_reduce", "t", t);
    begin(Op::all_reduce, "all_reduce", t, op);
    const std::vector<int64_t> counts = even_chunks(t.numel());
    ring_reduce_scatter(t, counts);
    ring_all_gather(t, counts);
    if (op == ReduceOp::avg) dist::scale(t, 1.0 / size());
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    dist::check_pair("reduce_scatter", in, out, size(), 1);
    reduce_scatter_v(in, out, std::vector<int64_t>(size_t(size()), out.numel()), op);
  }

  void reduce_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        ReduceOp op) override {
    const int64_t offset = dist::check_scatter_v(in, out, counts, rank_, size());
    begin(Op::reduce_scatter, "reduce_scatter", in, op);
    // Reduce in a scratch copy (in stays as it was, unless out is its own first elements).
    Tensor work = Tensor::empty({in.numel()}, in.dtype());
    std::memcpy(work.raw(), in.raw(), in.nbytes());
    ring_reduce_scatter(work, counts);
    const size_t es = dtype_size(in.dtype());
    std::memmove(out.raw(), static_cast<char*>(work.raw()) + size_t(offset) * es, out.nbytes());
    if (op == ReduceOp::avg) dist::scale(out, 1.0 / size());
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    dist::check_pair("all_gather", in, out, 1, size());
    all_gather_v(in, out, std::vector<int64_t>(size_t(size()), in.numel()));
  }

  void all_gather_v(const Tensor& in, const Tensor& out,
                    const std::vector<int64_t>& counts) override {
    const int64_t offset = dist::check_gather_v(in, out, counts, rank_, size());
    begin(Op::all_gather, "all_gather", out);
    const size_t es = dtype_size(out.dtype());
    char* mine = static_cast<char*>(out.raw()) + size_t(offset) * es;
    if (in.raw() != mine) std::memmove(mine, in.raw(), in.nbytes());
    ring_all_gather(out, counts);
  }

  void broadcast(const Tensor& t, int root) override {
    dist::check_tensor("broadcast", "t", t);
    NURI_CHECK(root >= 0 && root < size(), "broadcast: root ", root, " is not a rank of this ",
               size(), "-rank communicator");
    begin(Op::broadcast, "broadcast", t);
    const Deadline dl(timeout_s_);
    if (rank_ == root) {
      for (int q = 0; q < size(); ++q) {
        if (q != root) move(q, t.raw(), t.nbytes(), -1, nullptr, 0, dl);
      }
    } else {
      move(-1, nullptr, 0, root, t.raw(), t.nbytes(), dl);
    }
  }

  void send(const Tensor& t, int peer) override {
    dist::check_tensor("send", "t", t);
    dist::check_peer("send", peer, rank_, size());
    begin(Op::send, "send", t, std::nullopt, peer, ++sent_[size_t(peer)]);
    move(peer, t.raw(), t.nbytes(), -1, nullptr, 0, Deadline(timeout_s_));
  }

  void recv(const Tensor& t, int peer) override {
    dist::check_tensor("recv", "t", t);
    dist::check_peer("recv", peer, rank_, size());
    begin(Op::send, "recv", t, std::nullopt, peer, ++received_[size_t(peer)]);
    move(-1, nullptr, 0, peer, t.raw(), t.nbytes(), Deadline(timeout_s_));
  }

  void barrier() override {
    Tensor one = Tensor::zeros({1});
    begin(Op::barrier, "barrier", one);
    what_ = "barrier";
    const std::vector<int64_t> counts = even_chunks(1);
    ring_reduce_scatter(one, counts);
    ring_all_gather(one, counts);
  }

  std::unique_ptr<Communicator> split(const std::vector<int>& ranks) override {
    NURI_CHECK(!ranks.empty(), "split: no ranks given");
    std::vector<int> members;
    bool me = false;
    for (size_t i = 0; i < ranks.size(); ++i) {
      NURI_CHECK(ranks[i] >= 0 && ranks[i] < size(), "split: rank ", ranks[i],
                 " is outside this ", size(), "-rank communicator");
      for (size_t j = 0; j < i; ++j)
        NURI_CHECK(ranks[j] != ranks[i], "split: rank ", ranks[i], " is listed twice");
      me = me || ranks[i] == rank_;
      members.push_back(members_[size_t(ranks[i])]);
    }
    NURI_CHECK(me, "split: rank ", rank_, " is not in the group it asked for");
    check_usable("split");
    return std::make_unique<TcpCommunicator>(mesh_, std::move(members));
  }

 private:
  std::vector<int64_t> even_chunks(int64_t n) const {
    std::vector<int64_t> c(size_t(size()), n / size());
    for (int64_t r = 0; r < n % size(); ++r) ++c[size_t(r)];
    return c;
  }

  /// Ring reduce-scatter in place: rank r ends with the sum of chunk r (chunks of counts[i]).
  /// Step s: send chunk r-s-1 to r+1, receive chunk r-s-2 from r-1 and add it to ours.
  void ring_reduce_scatter(const Tensor& t, const std::vector<int64_t>& counts) {
    const int n = size();
    if (n == 1) return;
    const size_t es = dtype_size(t.dtype());
    std::vector<int64_t> at(size_t(n) + 1, 0);
    for (int i = 0; i < n; ++i) at[size_t(i) + 1] = at[size_t(i)] + counts[size_t(i)];
    const int64_t biggest = *std::max_element(counts.begin(), counts.end());
    std::vector<char> incoming(size_t(std::max<int64_t>(biggest, 1)) * es);
    char* base = static_cast<char*>(t.raw());
    const int next = (rank_ + 1) % n, prev = (rank_ + n - 1) % n;
    const Deadline dl(timeout_s_);
    for (int s = 0; s < n - 1; ++s) {
      const int c_out = ((rank_ - s - 1) % n + n) % n, c_in = ((rank_ - s - 2) % n + n) % n;
      move(next, base + size_t(at[size_t(c_out)]) * es, size_t(counts[size_t(c_out)]) * es, prev,
           incoming.data(), size_t(counts[size_t(c_in)]) * es, dl);
      accumulate(t.dtype(), base + size_t(at[size_t(c_in)]) * es, incoming.data(),
                 counts[size_t(c_in)]);
    }
  }

  /// Ring all-gather in place: rank r holds chunk r; step s sends chunk r-s to r+1 and receives
  /// chunk r-s-1 from r-1.
  void ring_all_gather(const Tensor& t, const std::vector<int64_t>& counts) {
    const int n = size();
    if (n == 1) return;
    const size_t es = dtype_size(t.dtype());
    std::vector<int64_t> at(size_t(n) + 1, 0);
    for (int i = 0; i < n; ++i) at[size_t(i) + 1] = at[size_t(i)] + counts[size_t(i)];
    char* base = static_cast<char*>(t.raw());
    const int next = (rank_ + 1) % n, prev = (rank_ + n - 1) % n;
    const Deadline dl(timeout_s_);
    for (int s = 0; s < n - 1; ++s) {
      const int c_out = ((rank_ - s) % n + n) % n, c_in = ((rank_ - s - 1) % n + n) % n;
      move(next, base + size_t(at[size_t(c_out)]) * es, size_t(counts[size_t(c_out)]) * es, prev,
           base + size_t(at[size_t(c_in)]) * es, size_t(counts[size_t(c_in)]) * es, dl);
    }
  }

  /// Sends to and receives from ranks of this communicator (-1: none), or fails the operation:
  /// first the frames (the one received must be this operation's), then the bytes.
  void move(int to, const void* out, size_t out_n, int from, void* in, size_t in_n,
            const Deadline& dl) {
    const int wto = to >= 0 ? members_[size_t(to)] : -1;
    const int wfrom = from >= 0 ? members_[size_t(from)] : -1;
    const int fd_out = wto >= 0 ? mesh_->fds[size_t(wto)] : -1;
    const int fd_in = wfrom >= 0 ? mesh_->fds[size_t(wfrom)] : -1;
    // Each message: its frame, then its bytes, in one stream; what arrives is read only after
    // its frame was found to be this operation's.
    Frame mine = frame_, theirs{};
    mine.bytes = out_n;
    Parts o, i;
    if (to >= 0) {
      o.p[0] = reinterpret_cast<char*>(&mine);
      o.n[0] = sizeof mine;
      o.p[1] = static_cast<char*>(const_cast<void*>(out));
      o.n[1] = out_n;
    }
    if (from >= 0) {
      i.p[0] = reinterpret_cast<char*>(&theirs);
      i.n[0] = sizeof theirs;
      i.p[1] = static_cast<char*>(in);
      i.n[1] = in_n;
    }
    const std::string err = transfer(fd_out, o, fd_in, i, dl, wto, wfrom, [&] {
      if (from >= 0) check_frame(theirs, in_n, from);
    });
    if (err.empty()) return;
    mesh_->mark_broken(what_);
    std::ostringstream t;
    t << timeout_s_;
    if (err.rfind("timeout", 0) == 0) {
      NURI_CHECK(false, what_, " on rank ", rank_, " of ", size(), " (tcp) did not complete "
                 "within ", t.str(), " s ", err.substr(8), ": a peer died, hung, or is in a "
                 "different collective. This rank gives up; every rank should exit "
                 "(NURI_COMM_TIMEOUT_S sets the limit)");
    }
    NURI_CHECK(false, what_, " on rank ", rank_, " of ", size(), " (tcp) failed: ", err,
               ". This rank gives up; every rank should exit");
  }

  void check_usable(const char* op) const {
    NURI_CHECK(!mesh_->broken, op, " on rank ", rank_, ": this job's connections failed earlier (",
               mesh_->what_broke(), ") and cannot be used again; end the process");
  }

  /// Fails the operation (and the mesh: the stream is out of step) unless the frame from
  /// `from` belongs to this operation and carries in_n bytes.
  void check_frame(const Frame& f, size_t in_n, int from) {
    Frame want = frame_;
    want.bytes = in_n;
    const bool same_op = f.magic == kFrameMagic && f.op == want.op && f.dtype == want.dtype &&
                         f.rop == want.rop && f.group == want.group && f.seq == want.seq &&
                         f.count == want.count;
    if (same_op && f.bytes == want.bytes) return;
    mesh_->mark_broken(what_);
    std::ostringstream why;
    if (f.magic != kFrameMagic) {
      why << "what it sent is not a message of this job's (the connection is out of step)";
    } else if (f.group != want.group) {
      why << "it sent " << describe_frame(f) << " of another of its communicators, where this "
          << "rank expected " << describe_frame(want, name_);
    } else if (!same_op) {
      why << "it sent " << describe_frame(f) << " where this rank is in "
          << describe_frame(want, name_)
          << ": the ranks called different operations, in another order, or with tensors of "
             "other sizes";
    } else {
      why << "it sent " << f.bytes << " bytes of " << describe_frame(f) << " where this rank "
          << "expected " << want.bytes << ": the ranks passed different chunk counts";
    }
    NURI_CHECK(false, what_, " on rank ", rank_, " of ", size(), " (tcp) failed with rank ",
               from, ": ", why.str(), ". This rank gives up; every rank should exit");
  }

  /// Starts an operation: what_ for messages, and the frame its messages carry (seq: a send's
  /// or receive's number on the pair; 0 for a collective, numbered here).
  void begin(Op op, const char* name, const Tensor& t, std::optional<ReduceOp> rop = std::nullopt,
             int peer = -1, uint64_t seq = 0) {
    check_usable(name);
    name_ = name;
    what_ = dist::describe(name, t, rop, peer);
    frame_ = Frame{};
    frame_.op = uint8_t(op);
    frame_.dtype = uint8_t(t.dtype());
    frame_.rop = rop ? (*rop == ReduceOp::sum ? 1 : 2) : 0;
    frame_.group = group_;
    frame_.seq = seq != 0 ? seq : ++collectives_;
    frame_.count = uint64_t(t.numel());
  }

  std::shared_ptr<Mesh> mesh_;
  std::vector<int> members_;  ///< world ranks, in this communicator's rank order
  int rank_ = 0;
  std::string what_;
  const char* name_ = "";  ///< the current operation's name
  Frame frame_;           ///< the current operation's
  uint32_t group_ = 0;    ///< a hash of members_
  uint64_t collectives_ = 0;
  std::vector<uint64_t> sent_, received_;  ///< messages to and from each rank (send, recv)
};

// ---- rendezvous --------------------------------------------------------------------------------

int listen_on(int port, int backlog, const std::string& what) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  NURI_CHECK(fd >= 0, "tcp rendezvous: socket() failed: ", errno_str());
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(uint16_t(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, backlog) != 0) {
    const std::string e = errno_str();
    ::close(fd);
    // torchrun's static rendezvous keeps its agent's store on MASTER_PORT itself.
    // (Unless nuri.init_process_group took another port through that store already.)
    const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    const char* moved = std::getenv("NURI_MASTER_PORT_FROM_STORE");
    const bool torchrun = agent && std::string(agent) == "True" && !(moved && *moved);
    NURI_CHECK(false, "tcp rendezvous: cannot listen on ", what, " port ", port, ": ", e,
               port == 0 ? ""
               : torchrun
                   ? " (under torchrun MASTER_PORT is its agent's store: start the program "
                     "with python -m nuri train, or from Python after nuri.init_process_group(), "
                     "which take another port through that store)"
                   : " (another job may be using it: pick another MASTER_PORT)");
  }
  set_nonblocking(fd);
  return fd;
}

int bound_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

/// A socket closed when it goes out of scope unless handed on (the rendezvous's error paths).
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  ~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

/// Accepts one connection before the deadline; returns the socket and the peer's IPv4 address.
int accept_one(int lfd, const Deadline& dl, uint32_t* ip, const std::string& waiting_for) {
  for (;;) {
    NURI_CHECK(!dist::wait_interrupted(), "tcp rendezvous: interrupted waiting for ", waiting_for);
    NURI_CHECK(!dl.passed(), "tcp rendezvous: ", waiting_for, " did not arrive in time");
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, dl.poll_ms()) <= 0) continue;
    sockaddr_in a{};
    socklen_t len = sizeof a;
    const int fd = ::accept(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    if (fd < 0) {
      // Out of file descriptors (a mesh of thousands of ranks) is said, not retried until the
      // deadline; a connection that went away before it was taken is retried.
      NURI_CHECK(errno != EMFILE && errno != ENFILE, "tcp rendezvous: cannot accept ",
                 waiting_for, ": ", errno_str(), " (a job of N ranks holds N - 1 sockets in "
                 "each process: raise the open-file limit, ulimit -n)");
      continue;
    }
    if (ip) *ip = a.sin_addr.s_addr;
    set_nonblocking(fd);
    set_nodelay(fd);
    return fd;
  }
}

/// Connects to ip:port, retrying while nobody listens yet, until the deadline.
int connect_to(uint32_t ip, int port, const Deadline& dl, const std::string& what,
               int master_port = 0) {
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    NURI_CHECK(fd >= 0, "tcp rendezvous: socket() failed: ", errno_str());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = ip;
    a.sin_port = htons(uint16_t(port));
    // Non-blocking, so that a peer whose packets are dropped (a firewall) costs the deadline,
    // not the kernel's two minutes of SYN retries an attempt.
    set_nonblocking(fd);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      while ((rc = ::poll(&p, 1, dl.poll_ms())) == 0 || (rc < 0 && errno == EINTR)) {
        if (dl.passed() || dist::wait_interrupted()) break;
      }
      int err = ETIMEDOUT;
      socklen_t len = sizeof err;
      if (rc > 0) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      errno = err;
      rc = err == 0 ? 0 : -1;
    }
    if (rc == 0) {
      set_nodelay(fd);
      return fd;
    }
    const std::string e = errno_str();
    ::close(fd);
    NURI_CHECK(!dist::wait_interrupted(), "tcp rendezvous: interrupted connecting to ", what);
    NURI_CHECK(!dl.passed(), "tcp rendezvous: cannot connect to ", what, ": ", e,
               port == master_port ? ""
                                   : " (every rank listens on a port of its own for its peers: "
                                     "between nodes those must be reachable too, not only "
                                     "MASTER_PORT)");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void exchange(int fd, const void* out, size_t out_n, void* in, size_t in_n, const Deadline& dl,
              int peer) {
  const std::string err = transfer(fd, out, out_n, fd, in, in_n, dl, peer, peer);
  NURI_CHECK(err.empty(), "tcp rendezvous with ", peer >= 0 ? "rank " + std::to_string(peer)
                                                            : std::string("a higher rank"),
             ": ", err);
}

uint32_t resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  NURI_CHECK(rc == 0 && res != nullptr, "MASTER_ADDR='", host, "' does not resolve to an IPv4 "
             "address: ", rc == 0 ? "no address" : gai_strerror(rc));
  const uint32_t ip = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr.s_addr;
  ::freeaddrinfo(res);
  return ip;
}

}  // namespace

std::unique_ptr<Communicator> make_tcp_communicator(const LaunchInfo& info, double timeout_s) {
  NURI_CHECK(!info.master_addr.empty() && info.master_port > 0 && info.master_port < 65536,
             "a job of ", info.world_size, " processes meeting over TCP (",
             launcher_name(info.launcher), ") needs MASTER_ADDR and MASTER_PORT (rank 0's host "
             "and a free port) in every process's environment");
  // The mesh holds a socket per peer: the soft open-file limit (often 1024) goes up to the hard
  // one, as far as the job needs.
  if (rlimit lim{}; ::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    const rlim_t want = rlim_t(info.world_size) + 256;
    if (lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max) {
      lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
      ::setrlimit(RLIMIT_NOFILE, &lim);
    }
  }
  auto mesh = std::make_shared<Mesh>();
  mesh->rank = info.rank;
  mesh->size = info.world_size;
  mesh->timeout_s = timeout_s;
  mesh->fds.assign(size_t(info.world_size), -1);
  const int n = info.world_size, me = info.rank;
  const Deadline dl(timeout_s);
  const std::string master = info.master_addr + ":" + std::to_string(info.master_port);
  std::vector<Peer> table(static_cast<size_t>(n));
  if (me == 0) {
    {
      const OwnedFd lfd(listen_on(info.master_port, n, "MASTER_PORT"));
      Hello mine;
      job_ids(mine.job);
      int turned_away = 0;
      for (int k = 1; k < n;) {
        uint32_t ip = 0;
        const std::string waiting =
            std::to_string(n - k) + " of the " + std::to_string(n - 1) + " other ranks" +
            (turned_away > 0 ? " (" + std::to_string(turned_away) + " connection(s) turned "
                                   "away: see the warnings above)" : "");
        OwnedFd fd(accept_one(lfd.get(), dl, &ip, waiting));
        // A rank says who it is as soon as it connects. Anything else on the port (a port scan,
        // a health check, a rank of another job given the same port) is turned away and the
        // rendezvous goes on: it must not stop this job.
        Hello h;
        char from[INET_ADDRSTRLEN] = "?";
        ::inet_ntop(AF_INET, &ip, from, sizeof from);
        const std::string err = transfer(fd.get(), nullptr, 0, fd.get(), &h, sizeof h,
                                         Deadline(std::min(10.0, dl.left_s())), -1, -1);
        const bool stray = !err.empty() || h.magic != kMagic;
        const std::string other = stray ? "" : job_differs(h, mine);
        if (stray || !other.empty()) {
          ++turned_away;
          NURI_LOG(warn, "tcp rendezvous: turned away a connection to ", master, " from ", from,
                   stray ? ": it did not say it was a nuri rank"
                         : ": a rank of another job (its " + other + " differs; two jobs may "
                           "have been given this MASTER_PORT)");
          if (!stray) {  // told why, so that it says so (best effort: it is closed next)
            const Peer no{kTurnedAway, int32_t(kTurnedAway)};
            (void)::send(fd.get(), &no, sizeof no, MSG_NOSIGNAL);
          }
          continue;
        }
        NURI_CHECK(h.world == n, "tcp rendezvous: rank ", h.rank, " (", from, ") says WORLD_SIZE=",
                   h.world, ", rank 0 has ", n, "; start every process with the same WORLD_SIZE");
        NURI_CHECK(h.rank > 0 && h.rank < n && mesh->fds[size_t(h.rank)] < 0,
                   "tcp rendezvous: RANK=", h.rank, " (", from, ") arrived twice or is outside "
                   "[1, ", n, "); give each process its own RANK");
        mesh->fds[size_t(h.rank)] = fd.release();
        table[size_t(h.rank)] = Peer{ip, h.port};
        ++k;
      }
    }
    for (int q = 1; q < n; ++q) {
      exchange(mesh->fds[size_t(q)], table.data(), table.size() * sizeof(Peer), nullptr, 0, dl, q);
    }
  } else {
    {
      const OwnedFd lfd(listen_on(0, n, "its own"));
      const uint32_t master_ip = resolve(info.master_addr);
      const int fd0 = connect_to(master_ip, info.master_port, dl,
                                 "rank 0 at " + master + " (MASTER_ADDR:MASTER_PORT)",
                                 info.master_port);
      mesh->fds[0] = fd0;
      Hello h;
      h.rank = me;
      h.world = n;
      h.port = bound_port(lfd.get());
      job_ids(h.job);
      const std::string err =
          transfer(fd0, &h, sizeof h, fd0, table.data(), table.size() * sizeof(Peer), dl, 0, 0);
      NURI_CHECK(err.empty() || table[0].ip != kTurnedAway, "tcp rendezvous: rank 0 at ", master,
                 " turned this rank away as a rank of another job (NURI_JOB_ID, "
                 "TORCHELASTIC_RUN_ID or the batch system's job id differs from rank 0's): is "
                 "MASTER_ADDR:MASTER_PORT this job's? Its warning names the variable");
      NURI_CHECK(err.empty(), "tcp rendezvous with rank 0 at ", master, ": ", err);
      // Rank 0 lists each rank at the address it connected from. A rank on rank 0's own host
      // may have come through a loopback address (MASTER_ADDR naming that host, which its
      // /etc/hosts maps to 127.0.1.1, as Debian's does), which no other host can reach; that
      // rank is on rank 0's host, so it is reached where rank 0 is.
      for (Peer& p : table) {
        if ((ntohl(p.ip) >> 24) == 127) p.ip = master_ip;
      }
      for (int q = 1; q < me; ++q) {  // connect to the lower ranks, say who we are
        OwnedFd fd(connect_to(table[size_t(q)].ip, table[size_t(q)].port, dl,
                              "rank " + std::to_string(q)));
        exchange(fd.get(), &h, sizeof h, nullptr, 0, dl, q);
        mesh->fds[size_t(q)] = fd.release();
      }
      for (int k = me + 1; k < n; ++k) {  // and accept the higher ones
        OwnedFd fd(accept_one(lfd.get(), dl, nullptr, "a connection from a higher rank"));
        Hello peer;
        exchange(fd.get(), nullptr, 0, &peer, sizeof peer, dl, -1);
        NURI_CHECK(peer.magic == kMagic && job_differs(peer, h).empty() && peer.rank > me &&
                       peer.rank < n && mesh->fds[size_t(peer.rank)] < 0,
                   "tcp rendezvous: rank ", me, " got an unexpected connection (rank ", peer.rank,
                   ")");
        mesh->fds[size_t(peer.rank)] = fd.release();
      }
    }
  }
  std::vector<int> all(static_cast<size_t>(n));
  for (int q = 0; q < n; ++q) all[size_t(q)] = q;
  auto comm = std::make_unique<TcpCommunicator>(std::move(mesh), std::move(all));
  comm->barrier();  // everyone has every connection before anyone goes on
  return comm;
}

}  // namespace nuri
