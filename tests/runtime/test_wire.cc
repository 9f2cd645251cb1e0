// Wire compatibility: bytes written by earlier versions still parse to what they meant (or,
// for the version-1 worker request, to a request the worker refuses by name), and the current
// messages keep their field numbers (golden bytes). Plus the error model of worker requests.
#include <gtest/gtest.h>

#include <string>

#include "control.pb.h"
#include "switchyard/core/error.h"
#include "switchyard/wire/wire.h"

namespace sy {
namespace {

namespace pb = wire::pb;

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

TEST(WireCompat, UnchangedControlMessagesParseAsBefore) {
  // HeartbeatRequest {worker_id: 2, rows_forward: 300, steps: 9} as version 1 wrote it.
  pb::HeartbeatRequest hb;
  ASSERT_TRUE(hb.ParseFromString(bytes({0x08, 0x02, 0x10, 0xac, 0x02, 0x30, 0x09})));
  EXPECT_EQ(hb.worker_id(), 2);
  EXPECT_EQ(hb.rows_forward(), 300u);
  EXPECT_EQ(hb.steps(), 9u);
  // RegisterWorkerReply {worker_id: 1, workers_expected: 4, heartbeat_ms: 500, ucx_peer_failure}.
  pb::RegisterWorkerReply reg;
  ASSERT_TRUE(reg.ParseFromString(bytes({0x08, 0x01, 0x10, 0x04, 0x18, 0xf4, 0x03, 0x20, 0x01})));
  EXPECT_EQ(reg.worker_id(), 1);
  EXPECT_EQ(reg.workers_expected(), 4);
  EXPECT_EQ(reg.heartbeat_ms(), 500u);
  EXPECT_TRUE(reg.ucx_peer_failure());
  EXPECT_EQ(reg.transport(), "");  // unknown to version 1
}

TEST(WireCompat, ControlErrorCodeWasAUint32AndIsNowTheSameNumberAsAnEnum) {
  // Frame {is_reply: true, error: "x", error_code: 3} with error_code written as uint32 3.
  switchyard::control::Frame f;
  ASSERT_TRUE(f.ParseFromString(bytes({0x20, 0x01, 0x2a, 0x01, 'x', 0x30, 0x03})));
  EXPECT_EQ(f.error(), "x");
  EXPECT_EQ(f.error_code(), switchyard::control::PEER_FAILED);
}

TEST(WireCompat, VersionOneWorkerRequestParsesWithoutAnOperation) {
  // {op: FORWARD (1 = 2), request_id: 7, payload_bytes: 48}: the op field is reserved now, so
  // the worker sees no operation and refuses the request by name instead of misreading it.
  pb::WorkerRequest r;
  ASSERT_TRUE(r.ParseFromString(bytes({0x08, 0x02, 0x10, 0x07, 0x20, 0x30})));
  EXPECT_EQ(r.request_id(), 7u);
  EXPECT_EQ(r.payload_bytes(), 48u);
  EXPECT_EQ(r.op_case(), pb::WorkerRequest::OP_NOT_SET);
}

TEST(WireCompat, CurrentWorkerMessagesKeepTheirFieldNumbers) {
  const std::string forward = bytes({0x10, 0x07, 0x20, 0x30, 0xaa, 0x01, 0x0c, 0x08, 0x03, 0x12, 0x06, 0x10,
                                     0x01, 0x18, 0x02, 0x20, 0x04, 0x18, 0x01});
  pb::WorkerRequest r;
  r.set_request_id(7);
  r.set_payload_bytes(48);
  r.mutable_forward()->set_dispatch_id(3);
  r.mutable_forward()->set_keep_for_backward(true);
  wire::key_to_pb({0, 1, 2}, 4, r.mutable_forward()->add_segments());
  EXPECT_EQ(r.SerializeAsString(), forward);
  pb::WorkerRequest back;
  ASSERT_TRUE(back.ParseFromString(forward));
  ASSERT_EQ(back.op_case(), pb::WorkerRequest::kForward);
  EXPECT_EQ(wire::key_from_pb(back.forward().segments(0)), (ExpertKey{0, 1, 2}));

  const std::string reply = bytes({0x08, 0x05, 0x2a, 0x09, 0x08, 0x01, 0x10, 0x03, 0x18, 0x02, 0x22, 0x01, 'm'});
  pb::WorkerReply rep;
  ASSERT_TRUE(rep.ParseFromString(reply));
  EXPECT_EQ(rep.request_id(), 5u);
  ASSERT_TRUE(rep.has_error());
  EXPECT_EQ(rep.error().kind(), pb::ErrorInfo::PEER_DEAD);
  EXPECT_EQ(rep.error().code(), switchyard::control::PEER_FAILED);
  EXPECT_EQ(rep.error().worker(), 2);
  EXPECT_EQ(rep.SerializeAsString(), reply);
}

TEST(WireErrors, TheClientTellsDeadPeerFromBadRequestFromInternal) {
  const pb::ErrorInfo bad = wire::error_info(Error(ErrorKind::input, "tensor 'x' is not finite"), 3);
  EXPECT_EQ(bad.kind(), pb::ErrorInfo::BAD_REQUEST);
  EXPECT_EQ(bad.worker(), 3);
  EXPECT_EQ(bad.message(), "worker 3: tensor 'x' is not finite");
  EXPECT_EQ(wire::status_from(bad).code(), StatusCode::invalid_argument);
  EXPECT_EQ(wire::error_info(Error(ErrorKind::transport, "rank 1 gone"), 0).kind(), pb::ErrorInfo::PEER_DEAD);
  EXPECT_EQ(wire::status_from(wire::error_info(Error(ErrorKind::transport, "gone"), 0)).code(), StatusCode::peer_failed);
  EXPECT_EQ(wire::error_info(std::runtime_error("bad_alloc"), 1).kind(), pb::ErrorInfo::INTERNAL);
  EXPECT_EQ(wire::error_info(Status(StatusCode::timeout, "late"), 1).kind(), pb::ErrorInfo::PEER_DEAD);
  // At the API edge: only a refused input is exit code 3.
  auto kind_of = [](const Status& s) {
    try {
      wire::throw_error(s);
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::config;
  };
  EXPECT_EQ(kind_of(wire::status_from(bad)), ErrorKind::input);
  EXPECT_EQ(kind_of(Status(StatusCode::peer_failed, "w")), ErrorKind::transport);
  EXPECT_EQ(kind_of(Status(StatusCode::internal, "w")), ErrorKind::runtime);
  // Issue 12: every ErrorInfo a worker sends for a bad request — input or config, by error or
  // by Status — is exit code 3 on the client, never 1 (internal) or 4.
  for (const pb::ErrorInfo& e : {wire::error_info(Error(ErrorKind::input, "x.npy: bad"), 1),
                                 wire::error_info(Error(ErrorKind::config, "model from client:3: bad"), 1),
                                 wire::error_info(Status(StatusCode::invalid_argument, "negative rows"), 1),
                                 wire::error_info(Status(StatusCode::protocol, "malformed"), 1)}) {
    SCOPED_TRACE(e.message());
    // The ErrorInfo crosses the wire as bytes.
    pb::ErrorInfo received;
    ASSERT_TRUE(received.ParseFromString(e.SerializeAsString()));
    EXPECT_EQ(kind_of(wire::status_from(received)), ErrorKind::input);
    try {
      wire::throw_error(wire::status_from(received));
    } catch (const Error& x) {
      EXPECT_EQ(x.exit_code(), 3);
      EXPECT_NE(std::string(x.what()).find("worker 1: "), std::string::npos) << x.what();
    }
  }
}

// Issue 12: a control request the server refused (invalid_argument: a bad model config or
// placement in the coordinator's plan handler) is a config error, exit 2, with the server's
// message; a failed channel stays a transport error, exit 4.
TEST(WireErrors, RefusedControlRequestsAreConfigErrors) {
  auto caught = [](const Status& s) {
    try {
      wire::throw_control_error("placing the model", s);
    } catch (const Error& e) {
      return std::pair<int, std::string>{e.exit_code(), e.what()};
    }
    return std::pair<int, std::string>{-1, ""};
  };
  const auto refused = caught(Status(StatusCode::invalid_argument, "/c/p.yaml:3: placement.experts[0].workers: worker 5 does not exist"));
  EXPECT_EQ(refused.first, 2);
  EXPECT_EQ(refused.second, "placing the model: invalid_argument: /c/p.yaml:3: placement.experts[0].workers: worker 5 does not exist");
  EXPECT_EQ(caught(Status(StatusCode::timeout, "no reply")).first, 4);
  EXPECT_EQ(caught(Status(StatusCode::peer_failed, "reset")).first, 4);
  EXPECT_EQ(caught(Status(StatusCode::protocol, "malformed reply")).first, 4);
}

}  // namespace
}  // namespace sy
