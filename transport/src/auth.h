// The control channel's handshake cryptography (OpenSSL libcrypto): nonces, HMAC-SHA256 proofs,
// constant-time comparison. Private to the transport.
//
// Each side proves the shared secret K over both fresh nonces, with its own label so that one
// side's proof is never valid as the other's:
//   client proof = HMAC-SHA256(K, "switchyard control v3 client" || 0 || Nc || Ns)
//   server proof = HMAC-SHA256(K, "switchyard control v3 server" || 0 || Nc || Ns)
#pragma once

#include <string>

namespace sy::control::auth {

inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;

enum class Side { client, server };

// kNonceBytes from the OS's CSPRNG (RAND_bytes); throws sy::Error(runtime) when it fails.
std::string random_nonce();
std::string proof(const std::string& secret, Side side, const std::string& client_nonce,
                  const std::string& server_nonce);
// Constant-time equality (CRYPTO_memcmp) of a received proof with the expected one.
bool proof_matches(const std::string& expected, const std::string& received);

}  // namespace sy::control::auth
