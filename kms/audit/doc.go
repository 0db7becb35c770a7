// Package audit is hsmkms's audit trail: every API call and every action
// hsmkms takes on its own, as a CloudTrail record (Event), in JSON Lines
// files that an auditor can check without trusting hsmkms.
//
// What it guarantees:
//
//   - Durable before acknowledged. Trail.Append returns only once the
//     record is written and fsynced (group commit: the records of every
//     caller waiting at once share one write and one fsync). A failed
//     write or fsync fails the trail for good: every later Append fails,
//     so nothing is done unaudited until an operator restarts hsmkms.
//   - A hash chain. Each record carries its sequence number and the
//     SHA-256 of the previous record's line ("hsmkms": {"sequence",
//     "previousHash"}), across files and across restarts, so a changed,
//     removed or inserted record breaks the chain where it happened.
//   - Signed digests. A file is closed when it reaches its size or age
//     (at most an hour), at a clean stop, and at the start after a crash;
//     each closing writes a digest naming the closed files with their
//     SHA-256, their first and last records, and the previous digest's
//     hash and signature. The digest is signed on the default token by a
//     key that never leaves it; its public key is exported as PEM beside
//     the digests, so `openssl dgst -sha256 -verify` checks a digest. An
//     hour without records still gets its (empty) digest.
//   - Gaps show. A deleted file is named by the digest that lists it; a
//     truncated sealed file fails its hash; a removed record breaks the
//     chain. The next start after a crash seals what the last run left
//     (a last line cut short by the crash was never acknowledged, and is
//     recorded as such), and its first record says how the last run ended.
//     Files deleted by retention are announced in the trail before they go.
//
// What it cannot see: records written after the last digest can be cut
// from the end of the newest file, by someone who can write the files,
// while hsmkms is down after a crash and before it seals them; the
// window is bounded by the rotation interval. Pin the public key
// (`hsmkms audit verify --public-key`) and keep copies of the digests
// elsewhere (a SIEM) to close it.
package audit
