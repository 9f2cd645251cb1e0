// UCX transport (the ucp API: tag matching over whatever UCX finds).
//
// UCX picks its transports from the environment as UCX users expect: UCX_TLS=sm,self for
// shared memory between processes of one machine, UCX_TLS=tcp,self for TCP, unset (or
// rc,ud,...) for RDMA between machines; UCX_NET_DEVICES, UCX_RNDV_THRESH and friends work as
// documented by UCX. Host memory only (Debian's UCX is built without CUDA). One default differs:
// UCX_TCP_MAX_POLL is 1 unless set, which works around a UCX 1.13 abort when a TCP peer dies
// (transport/src/ucx.cc says how).
//
// Mapping onto the interface: one ucp context + worker per transport (single-threaded; meant
// to be the one of its process), one endpoint per peer created from the peer's worker address
// (`connect_peer`, or `connect` for the fixed world) and closed by `disconnect_peer`,
// `post_send` = ucp_tag_send_nbx with this process's id in the top 20 tag bits, `post_recv` =
// ucp_tag_recv_nbx on the worker with the peer's id there and a full tag mask (so a receive
// matches that peer only; messages from a sender without an endpoint here stay in UCX's
// unexpected queue until a receive from that id is posted), `progress` = ucp_worker_progress,
// `register_memory` = ucp_mem_map. Endpoints ask for UCP_ERR_HANDLING_MODE_PEER, so a peer
// that dies fails the requests that involve it (its receives are cancelled) instead of
// hanging them. UCX 1.13's shared-memory transports (posix, sysv, cma, self) have no
// peer-failure support and refuse that mode; endpoints that only reach a peer through them
// fall back to UCP_ERR_HANDLING_MODE_NONE, where a dead peer surfaces as a timeout naming it.
//
// `disconnect_peer`: receives from the peer are cancelled (ucp_request_cancel) and fail with
// peer_failed once UCX completes the cancel (at the next progress/test; a receive whose data is
// already arriving completes normally). The endpoint is closed with UCP_EP_CLOSE_FLAG_FORCE
// when it has peer error handling and the peer failed or sends to it are in flight (those
// sends then fail with peer_failed); otherwise with a flush, where sends in flight still
// complete, and a send to a dead peer without error handling (shared memory) stays pending
// until the transport is destroyed. The endpoint's bookkeeping lives until UCX finishes the
// close; nothing the caller freed is touched.
//
// Destruction cancels what is in flight and closes every endpoint (flushed; forced for failed
// peers with error handling), progressing its own worker for at most 2 s: over TCP a flush
// needs the peer to progress, which other processes do; several transports on one thread
// should be destroyed while the others progress (tests/transport/test_peers.cc does this).
#pragma once

#include <memory>

#include "switchyard/transport/transport.h"

namespace sy::transport {

struct UcxOptions {
  // Ask for UCP_ERR_HANDLING_MODE_PEER (dead peers become errors), falling back per endpoint to
  // MODE_NONE when no selected transport supports it. False: always MODE_NONE.
  bool peer_error_handling = true;
};

// Throws sy::Error(transport) naming the failing UCX call when UCX cannot initialise.
std::unique_ptr<Transport> make_ucx_transport(const TransportOptions& options, const UcxOptions& ucx = {});

}  // namespace sy::transport
