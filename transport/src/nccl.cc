#include "switchyard/transport/nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>
#include <unordered_map>

#include "switchyard/core/log.h"

namespace sy::transport {

bool nccl_transport_compiled() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

Result<void*> device_allocate(size_t bytes, int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    return Status(StatusCode::internal, std::string("cudaSetDevice: ") + cudaGetErrorString(e));
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes); e != cudaSuccess)
    return Status(StatusCode::internal, "cudaMalloc of " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
  return p;
}

void device_free(void* pointer) {
  if (pointer) (void)cudaFree(pointer);
}

Status device_copy(void* destination, const void* source, size_t bytes) {
  if (bytes == 0) return Status::ok();
  if (cudaError_t e = cudaMemcpy(destination, source, bytes, cudaMemcpyDefault); e != cudaSuccess)
    return Status(StatusCode::internal, std::string("cudaMemcpy: ") + cudaGetErrorString(e));
  return Status::ok();
}

namespace {

using Clock = std::chrono::steady_clock;

class NcclTransport final : public Transport {
 public:
  NcclTransport(const TransportOptions& options, const NcclOptions& nccl) : Transport(options), nccl_(nccl) {
    if (world_size() < 1)
      throw Error(ErrorKind::transport, "nccl transport: needs a fixed world (world_size >= 1); NCCL has no dynamic peers");
    const int devices = cuda_device_count();
    if (devices == 0) throw Error(ErrorKind::transport, "nccl transport: no CUDA device is usable on this machine");
    device_ = nccl.device >= 0 ? nccl.device : rank() % devices;
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    check_cuda(cudaMalloc(&counts_device_, 2 * sizeof(int64_t) * static_cast<size_t>(world_size())), "cudaMalloc");
    if (rank() == 0) {
      ncclUniqueId id;
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        throw Error(ErrorKind::transport, std::string("nccl transport: ncclGetUniqueId failed: ") + ncclGetErrorString(r));
      unique_id_.assign(reinterpret_cast<const char*>(&id), sizeof(id));
    }
  }

  ~NcclTransport() override {
    (void)cudaSetDevice(device_);
    for (auto& [id, op] : ops_) (void)cudaEventDestroy(op.event);
    if (comm_) {
      if (aborted_ || failed_) (void)ncclCommAbort(comm_);
      else (void)ncclCommDestroy(comm_);
    }
    if (counts_device_) (void)cudaFree(counts_device_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "nccl"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::cuda; }

  std::string local_address() const override { return pack_address(rank(), own_label(), unique_id_); }

  Status connect(const std::vector<std::string>& addresses) override {
    if (static_cast<int>(addresses.size()) != world_size())
      return Status(StatusCode::invalid_argument, "connect: " + std::to_string(addresses.size()) +
                                                      " addresses for a world of " + std::to_string(world_size()));
    if (comm_) return Status::ok();
    std::string id_bytes;
    for (int r = 0; r < world_size(); ++r) {
      std::string label, body;
      Rank id = 0;
      if (!unpack_address(addresses[static_cast<size_t>(r)], id, label, body))
        return Status(StatusCode::invalid_argument, "connect: malformed address for " + describe_peer(r));
      if (id != r)
        return Status(StatusCode::invalid_argument, "connect: the address given for rank " + std::to_string(r) +
                                                        " is that of rank " + std::to_string(id));
      set_peer_label(r, label);
      if (r == 0) id_bytes = body;
    }
    if (id_bytes.size() != sizeof(ncclUniqueId))
      return Status(StatusCode::invalid_argument, "connect: " + describe_peer(0) + "'s address has no ncclUniqueId");
    ncclUniqueId id;
    std::memcpy(&id, id_bytes.data(), sizeof(id));
    (void)cudaSetDevice(device_);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, world_size(), id, rank(), &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      comm_ = nullptr;
      return Status(StatusCode::unreachable, std::string("connect: ncclCommInitRankConfig failed: ") + ncclGetErrorString(r));
    }
    if (Status s = settle(Clock::now() + nccl_.init_timeout, "communicator init (waiting for every rank)"); !s)
      return s;
    return Status::ok();
  }

  Status connect_peer(Rank, std::string_view) override {
    return Status(StatusCode::unsupported, "nccl transport: a fixed world only; connect every rank with connect()");
  }
  Status disconnect_peer(Rank) override {
    return Status(StatusCode::unsupported, "nccl transport: a fixed world only; peers cannot be disconnected");
  }

  bool can_reach(Rank peer) const override { return comm_ && !failed_ && peer >= 0 && peer < world_size(); }

  std::vector<Rank> peers() const override {
    std::vector<Rank> out;
    if (comm_)
      for (Rank r = 0; r < world_size(); ++r) out.push_back(r);
    return out;
  }

  Result<MemoryRegion> register_memory(void* data, size_t bytes, MemoryKind kind) override {
    if (kind != MemoryKind::cuda) return Status(StatusCode::unsupported, "nccl transport: CUDA memory only");
    return MemoryRegion{data, bytes, kind, ++next_region_};
  }
  Status deregister_memory(MemoryRegion& region) override {
    region = MemoryRegion{};
    return Status::ok();
  }

  Result<RequestId> post_send(Rank peer, Tag tag, const void* data, size_t bytes, const MemoryRegion*) override {
    return post(peer, tag, const_cast<void*>(data), bytes, true);
  }
  Result<RequestId> post_recv(Rank peer, Tag tag, void* data, size_t capacity, const MemoryRegion*) override {
    return post(peer, tag, data, capacity, false);
  }

  void progress() override {}

  Result<Completion> test(RequestId request) override {
    auto it = ops_.find(request.value);
    if (it == ops_.end()) return Status(StatusCode::invalid_argument, "test: unknown request " + std::to_string(request.value));
    const cudaError_t e = cudaEventQuery(it->second.event);
    if (e == cudaErrorNotReady) {
      if (Status s = async_error(); !s) return release(it, s);
      return Completion{false, 0};
    }
    if (e != cudaSuccess) return release(it, Status(StatusCode::internal, std::string("cudaEventQuery: ") + cudaGetErrorString(e)));
    const size_t bytes = it->second.bytes;
    (void)release(it, Status::ok());
    return Completion{true, bytes};
  }

  size_t outstanding_requests() const override { return ops_.size(); }

  std::string describe_request(RequestId request) const override {
    auto it = ops_.find(request.value);
    if (it == ops_.end()) return "request " + std::to_string(request.value) + " (released)";
    const Op& op = it->second;
    return std::string(op.is_send ? "ncclSend of " : "ncclRecv of ") + std::to_string(op.bytes) + " bytes " +
           (op.is_send ? "to " : "from ") + describe_peer(op.peer) + ", tag " + std::to_string(op.tag);
  }

  Result<ExchangeLayout> exchange_counts(std::span<const int64_t> send_rows, Timeout timeout) override {
    if (Status s = ready(); !s) return s;
    if (static_cast<int>(send_rows.size()) != world_size())
      return Status(StatusCode::invalid_argument, "exchange_counts: " + std::to_string(send_rows.size()) +
                                                      " counts for a world of " + std::to_string(world_size()));
    for (int64_t n : send_rows)
      if (n < 0) return Status(StatusCode::invalid_argument, "exchange_counts: negative row count");
    const auto deadline = Clock::now() + timeout;
    const size_t w = static_cast<size_t>(world_size());
    int64_t* send_counts = counts_device_;
    int64_t* recv_counts = counts_device_ + w;
    (void)cudaSetDevice(device_);
    if (cudaError_t e = cudaMemcpyAsync(send_counts, send_rows.data(), w * sizeof(int64_t), cudaMemcpyHostToDevice, stream_);
        e != cudaSuccess)
      return cuda_status("cudaMemcpyAsync", e);
    if (Status s = nccl_call(ncclGroupStart(), "ncclGroupStart"); !s) return s;
    for (int r = 0; r < world_size(); ++r) {
      if (Status s = nccl_call(ncclSend(send_counts + r, sizeof(int64_t), ncclUint8, r, comm_, stream_), "ncclSend"); !s)
        return s;
      if (Status s = nccl_call(ncclRecv(recv_counts + r, sizeof(int64_t), ncclUint8, r, comm_, stream_), "ncclRecv"); !s)
        return s;
    }
    if (Status s = nccl_call(ncclGroupEnd(), "ncclGroupEnd"); !s) return s;
    std::vector<int64_t> recv_rows(w, 0);
    if (cudaError_t e = cudaMemcpyAsync(recv_rows.data(), recv_counts, w * sizeof(int64_t), cudaMemcpyDeviceToHost, stream_);
        e != cudaSuccess)
      return cuda_status("cudaMemcpyAsync", e);
    if (Status s = wait_stream(deadline, "exchange_counts", timeout); !s) return s;
    return ExchangeLayout(std::vector<int64_t>(send_rows.begin(), send_rows.end()), std::move(recv_rows));
  }

  Status exchange_rows(const ExchangeLayout& layout, const ExchangeBuffers& buffers, Timeout timeout) override {
    if (Status s = ready(); !s) return s;
    if (buffers.kind != MemoryKind::cuda)
      return Status(StatusCode::unsupported, "exchange_rows: the nccl transport moves CUDA memory only");
    if (layout.world_size() != world_size())
      return Status(StatusCode::invalid_argument, "exchange_rows: layout is for another world size");
    if (layout.send_rows(rank()) != layout.recv_rows(rank()))
      return Status(StatusCode::invalid_argument, "exchange_rows: rows to self differ from rows from self");
    const auto deadline = Clock::now() + timeout;
    const auto* send = static_cast<const char*>(buffers.send);
    auto* recv = static_cast<char*>(buffers.recv);
    const size_t rb = buffers.row_bytes;
    (void)cudaSetDevice(device_);
    if (Status s = nccl_call(ncclGroupStart(), "ncclGroupStart"); !s) return s;
    for (int i = 0; i < world_size(); ++i) {
      const Rank peer = (rank() + i) % world_size();
      const size_t out = static_cast<size_t>(layout.send_rows(peer)) * rb;
      const size_t in = static_cast<size_t>(layout.recv_rows(peer)) * rb;
      if (out > 0)
        if (Status s = nccl_call(ncclSend(send + static_cast<size_t>(layout.send_offset(peer)) * rb, out, ncclUint8, peer,
                                          comm_, stream_),
                                 "ncclSend");
            !s)
          return s;
      if (in > 0)
        if (Status s = nccl_call(ncclRecv(recv + static_cast<size_t>(layout.recv_offset(peer)) * rb, in, ncclUint8, peer,
                                          comm_, stream_),
                                 "ncclRecv");
            !s)
          return s;
    }
    if (Status s = nccl_call(ncclGroupEnd(), "ncclGroupEnd"); !s) return s;
    return wait_stream(deadline, "exchange_rows", timeout);
  }

 private:
  struct Op {
    cudaEvent_t event;
    Rank peer;
    Tag tag;
    size_t bytes;
    bool is_send;
  };

  static void check_cuda(cudaError_t e, const char* call) {
    if (e != cudaSuccess)
      throw Error(ErrorKind::transport, std::string("nccl transport: ") + call + " failed: " + cudaGetErrorString(e));
  }
  static Status cuda_status(const char* call, cudaError_t e) {
    return Status(StatusCode::internal, std::string(call) + " failed: " + cudaGetErrorString(e));
  }

  Status ready() const {
    if (!comm_) return Status(StatusCode::unreachable, "nccl transport: not connected");
    if (aborted_ || failed_) return Status(StatusCode::peer_failed, "nccl transport: communicator aborted after an earlier error");
    return Status::ok();
  }

  Status async_error() {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      failed_ = true;
      return Status(StatusCode::peer_failed, std::string("NCCL communicator error (a peer failed or the network broke): ") +
                                                 ncclGetErrorString(r != ncclSuccess ? r : state) + "; last: " +
                                                 ncclGetLastError(comm_));
    }
    return Status::ok();
  }

  // Non-blocking communicator: calls may return ncclInProgress until the comm settles.
  Status nccl_call(ncclResult_t r, const char* call) {
    if (r == ncclSuccess) return Status::ok();
    if (r == ncclInProgress) return settle(Clock::now() + nccl_.init_timeout, call);
    failed_ = true;
    return Status(StatusCode::internal, std::string(call) + " failed: " + ncclGetErrorString(r));
  }

  Status settle(Clock::time_point deadline, const std::string& what) {
    while (true) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) state = r;
      if (state == ncclSuccess) return Status::ok();
      if (state != ncclInProgress) {
        failed_ = true;
        return Status(StatusCode::peer_failed, what + ": " + ncclGetErrorString(state));
      }
      if (Clock::now() >= deadline) {
        abort();
        return Status(StatusCode::timeout, what + ": timed out; ranks that did not arrive: unknown to NCCL (world of " +
                                               std::to_string(world_size()) + "); communicator aborted");
      }
      std::this_thread::yield();
    }
  }

  Status wait_stream(Clock::time_point deadline, const char* what, Timeout timeout) {
    while (true) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return Status::ok();
      if (e != cudaErrorNotReady) return cuda_status("cudaStreamQuery", e);
      if (Status s = async_error(); !s) return Status(s.code(), std::string(what) + ": " + s.message());
      if (Clock::now() >= deadline) {
        abort();
        return Status(StatusCode::timeout, std::string(what) + ": timed out after " + std::to_string(timeout.count()) +
                                               " ms waiting for the NCCL group (some peer of the " +
                                               std::to_string(world_size()) + "-rank world did not take part); " +
                                               "communicator aborted");
      }
      std::this_thread::yield();
    }
  }

  void abort() {
    if (comm_ && !aborted_) {
      SY_LOG(warn, "transport", "nccl: aborting the communicator of " << describe_peer(rank()));
      (void)ncclCommAbort(comm_);
      comm_ = nullptr;
      aborted_ = true;
    }
  }

  Result<RequestId> post(Rank peer, Tag tag, void* data, size_t bytes, bool is_send) {
    if (Status s = check_world_rank(peer); !s) return s;
    if (Status s = ready(); !s) return s;
    if (ops_.size() >= options().max_outstanding_requests)
      return Status(StatusCode::no_resource, std::to_string(ops_.size()) + " requests in flight; progress and retry");
    (void)cudaSetDevice(device_);
    cudaEvent_t event = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); e != cudaSuccess)
      return cuda_status("cudaEventCreate", e);
    const ncclResult_t r = is_send ? ncclSend(data, bytes, ncclUint8, peer, comm_, stream_)
                                   : ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_);
    if (Status s = nccl_call(r, is_send ? "ncclSend" : "ncclRecv"); !s) {
      (void)cudaEventDestroy(event);
      return Status(s.code(), s.message() + " (" + describe_peer(peer) + ")");
    }
    if (cudaError_t e = cudaEventRecord(event, stream_); e != cudaSuccess) {
      (void)cudaEventDestroy(event);
      return cuda_status("cudaEventRecord", e);
    }
    const uint64_t id = ++next_request_;
    ops_.emplace(id, Op{event, peer, tag, bytes, is_send});
    return RequestId{id};
  }

  template <class It>
  Result<Completion> release(It it, Status s) {
    (void)cudaEventDestroy(it->second.event);
    const std::string what = describe_request(RequestId{it->first});
    ops_.erase(it);
    if (!s) return Status(s.code(), what + ": " + s.message());
    return Completion{true, 0};
  }

  NcclOptions nccl_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int64_t* counts_device_ = nullptr;
  std::string unique_id_;
  bool aborted_ = false;
  bool failed_ = false;
  std::unordered_map<uint64_t, Op> ops_;
  uint64_t next_request_ = 0;
  uint64_t next_region_ = 0;
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(const TransportOptions& options, const NcclOptions& nccl) {
  return std::make_unique<NcclTransport>(options, nccl);
}

}  // namespace sy::transport
