#!/usr/bin/env bash
# Drives the stock `aws kms` CLI against `hsmkms serve` on a throwaway data
# directory, using nothing but the environment block the server prints.
#
#   scripts/cli-test.sh [path/to/hsmkms]
#
# Exits non-zero on the first command that fails or answers wrongly.
set -euo pipefail

bin=${1:-bin/hsmkms}
command -v aws >/dev/null || { echo "cli-test: the aws CLI is not installed" >&2; exit 1; }
. "$(dirname "$0")/serve-temp.sh"
# Only what the server printed: no credentials or endpoints of our own.
export AWS_MAX_ATTEMPTS=1

step() { echo "cli-test: $*" >&2; }
fail() { echo "cli-test: FAIL: $*" >&2; cat "$dir/log" >&2; exit 1; }

step "create-key"
key=$(aws kms create-key --description "cli test" --query KeyMetadata.KeyId --output text)
[[ $key =~ ^[0-9a-f-]{36}$ ]] || fail "create-key returned '$key'"

step "create-alias"
aws kms create-alias --alias-name alias/cli-test --target-key-id "$key"

step "encrypt via alias"
printf 'hello from the aws cli' > "$dir/plain"
aws kms encrypt --key-id alias/cli-test --plaintext "fileb://$dir/plain" \
  --encryption-context purpose=cli --query CiphertextBlob --output text | base64 -d > "$dir/blob"

step "decrypt without key id"
aws kms decrypt --ciphertext-blob "fileb://$dir/blob" --encryption-context purpose=cli \
  --query Plaintext --output text | base64 -d > "$dir/back"
cmp -s "$dir/plain" "$dir/back" || fail "decrypt returned different plaintext"
if aws kms decrypt --ciphertext-blob "fileb://$dir/blob" 2>"$dir/err" >/dev/null; then
  fail "decrypt without the encryption context succeeded"
fi
grep -q InvalidCiphertextException "$dir/err" || fail "expected InvalidCiphertextException, got: $(cat "$dir/err")"

step "generate-data-key"
len=$(aws kms generate-data-key --key-id "$key" --key-spec AES_256 --query Plaintext --output text | base64 -d | wc -c)
[ "$len" -eq 32 ] || fail "data key is $len bytes"

step "list-keys"
aws kms list-keys --query 'Keys[].KeyId' --output text | grep -q "$key" || fail "list-keys misses $key"

step "list-aliases"
aws kms list-aliases --query 'Aliases[].AliasName' --output text | grep -q alias/cli-test || fail "list-aliases misses the alias"

step "schedule-key-deletion"
state=$(aws kms schedule-key-deletion --key-id "$key" --pending-window-in-days 7 --query KeyState --output text)
[ "$state" = PendingDeletion ] || fail "schedule-key-deletion state '$state'"
state=$(aws kms describe-key --key-id alias/cli-test --query KeyMetadata.KeyState --output text)
[ "$state" = PendingDeletion ] || fail "describe-key state '$state'"

step "asymmetric: create an ECC_NIST_P256 signing key"
ekey=$(aws kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY --query KeyMetadata.KeyId --output text)
[[ $ekey =~ ^[0-9a-f-]{36}$ ]] || fail "create-key (ECC) returned '$ekey'"

step "asymmetric: sign, verify, and openssl verifies with get-public-key"
printf 'signed by the aws cli' > "$dir/msg"
aws kms sign --key-id "$ekey" --message "fileb://$dir/msg" --message-type RAW --signing-algorithm ECDSA_SHA_256 \
  --query Signature --output text | base64 -d > "$dir/sig"
valid=$(aws kms verify --key-id "$ekey" --message "fileb://$dir/msg" --message-type RAW --signing-algorithm ECDSA_SHA_256 \
  --signature "fileb://$dir/sig" --query SignatureValid --output text)
[ "$valid" = True ] || fail "verify said '$valid'"
aws kms get-public-key --key-id "$ekey" --query PublicKey --output text | base64 -d > "$dir/pub.der"
openssl dgst -sha256 -verify "$dir/pub.der" -keyform DER -signature "$dir/sig" "$dir/msg" >"$dir/ossl" 2>&1 \
  || fail "openssl could not verify the signature: $(cat "$dir/ossl")"
printf 'tampered' >> "$dir/msg"
if aws kms verify --key-id "$ekey" --message "fileb://$dir/msg" --signing-algorithm ECDSA_SHA_256 \
  --signature "fileb://$dir/sig" 2>"$dir/err" >/dev/null; then
  fail "verify accepted a signature over another message"
fi
grep -q KMSInvalidSignatureException "$dir/err" || fail "expected KMSInvalidSignatureException, got: $(cat "$dir/err")"

step "custom key store: create on the first printed cluster"
cluster=$(sed -n 's/^  \(cluster-[a-z2-7]*\)  initial kmsuser password: .*$/\1/p' "$dir/out" | head -1)
password=$(sed -n 's/^  cluster-[a-z2-7]*  initial kmsuser password: \(.*\)$/\1/p' "$dir/out" | head -1)
[ -n "$cluster" ] && [ -n "$password" ] || fail "no cluster printed"
cks=$(aws kms create-custom-key-store --custom-key-store-name cli-store --cloud-hsm-cluster-id "$cluster" \
  --key-store-password "$password" --trust-anchor-certificate "file://$AWS_CA_BUNDLE" --query CustomKeyStoreId --output text)
[[ $cks =~ ^cks-[0-9a-f]{17}$ ]] || fail "create-custom-key-store returned '$cks'"

store_state() {
  aws kms describe-custom-key-stores --custom-key-store-id "$cks" --query 'CustomKeyStores[0].ConnectionState' --output text
}
wait_state() {
  for _ in $(seq 1 50); do
    s=$(store_state)
    [ "$s" = "$1" ] && return 0
    [ "$s" = CONNECTING ] || [ "$s" = DISCONNECTING ] || fail "store is $s, wanted $1"
    sleep 0.1
  done
  fail "store never became $1"
}

step "custom key store: connect and poll until CONNECTED"
aws kms connect-custom-key-store --custom-key-store-id "$cks"
wait_state CONNECTED

step "custom key store: key, encrypt, decrypt"
skey=$(aws kms create-key --custom-key-store-id "$cks" --origin AWS_CLOUDHSM --query KeyMetadata.KeyId --output text)
aws kms encrypt --key-id "$skey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/sblob"
aws kms decrypt --ciphertext-blob "fileb://$dir/sblob" --query Plaintext --output text | base64 -d > "$dir/sback"
cmp -s "$dir/plain" "$dir/sback" || fail "decrypt in the store returned different plaintext"

step "custom key store: disconnect makes the key Unavailable"
aws kms disconnect-custom-key-store --custom-key-store-id "$cks"
wait_state DISCONNECTED
state=$(aws kms describe-key --key-id "$skey" --query KeyMetadata.KeyState --output text)
[ "$state" = Unavailable ] || fail "key state '$state' while disconnected"
if aws kms decrypt --ciphertext-blob "fileb://$dir/sblob" 2>"$dir/err" >/dev/null; then
  fail "decrypt succeeded while the store was disconnected"
fi
grep -q KMSInvalidStateException "$dir/err" || fail "expected KMSInvalidStateException, got: $(cat "$dir/err")"

step "custom key store: reconnect, the same ciphertext decrypts"
aws kms connect-custom-key-store --custom-key-store-id "$cks"
wait_state CONNECTED
aws kms decrypt --ciphertext-blob "fileb://$dir/sblob" --query Plaintext --output text | base64 -d > "$dir/sback"
cmp -s "$dir/plain" "$dir/sback" || fail "decrypt after reconnect returned different plaintext"

step "graceful shutdown"
kill -TERM "$pid"
wait "$pid" || fail "server exited with status $?"
pid=
echo "cli-test: all steps passed" >&2
