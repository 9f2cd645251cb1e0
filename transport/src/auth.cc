#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "switchyard/core/error.h"

namespace sy::control::auth {

std::string random_nonce() {
  std::string n(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), static_cast<int>(n.size())) != 1)
    throw_runtime_error("control channel: the system's random generator failed (RAND_bytes)");
  return n;
}

std::string proof(const std::string& secret, Side side, const std::string& client_nonce,
                  const std::string& server_nonce) {
  std::string message = side == Side::client ? "switchyard control v3 client" : "switchyard control v3 server";
  message.push_back('\0');
  message += client_nonce;
  message += server_nonce;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int out_len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &out_len) ||
      out_len != kProofBytes)
    throw_runtime_error("control channel: HMAC-SHA256 failed");
  return std::string(reinterpret_cast<const char*>(out), out_len);
}

bool proof_matches(const std::string& expected, const std::string& received) {
  return expected.size() == received.size() && CRYPTO_memcmp(expected.data(), received.data(), expected.size()) == 0;
}

}  // namespace sy::control::auth
