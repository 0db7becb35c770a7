#!/usr/bin/env bash
# Drives the stock `aws kms` CLI against `hsmkms serve` on a throwaway data
# directory, using nothing but the environment block the server prints.
#
#   scripts/cli-test.sh [path/to/hsmkms]        (`make test-cli` builds and runs it)
#
# Exits non-zero on the first command that fails or answers wrongly. The
# stock aws CLI must be installed (nothing here installs it); without it the
# script fails, unless HSMKMS_SKIP_CLI_TEST=1 says to skip it on purpose.
set -euo pipefail

bin=${1:-bin/hsmkms}
if ! command -v aws >/dev/null; then
  if [ "${HSMKMS_SKIP_CLI_TEST:-}" = 1 ]; then
    echo "cli-test: SKIPPED: the aws CLI is not installed and HSMKMS_SKIP_CLI_TEST=1" >&2
    exit 0
  fi
  cat >&2 <<'MSG'
cli-test: ************************************************************
cli-test: FAIL: the aws CLI is not installed, so the stock-CLI test cannot run.
cli-test: Install AWS CLI v1 or v2 so that `aws` is on PATH, or set
cli-test: HSMKMS_SKIP_CLI_TEST=1 to skip this test knowingly.
cli-test: ************************************************************
MSG
  exit 1
fi
[ -x "$bin" ] || { echo "cli-test: $bin is not an executable (make test-cli builds it)" >&2; exit 1; }
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

# AWS's exact answers (issue 11), as the stock CLI shows them: the error
# line must be exactly AWS's exception and message.
answers() { # code, message, then the aws kms arguments
  local code=$1 msg=$2 op
  shift 2
  op=$(printf '%s' "$1" | sed -E 's/(^|-)([a-z])/\U\2/g')
  if aws kms "$@" 2>"$dir/err" >/dev/null; then fail "aws kms $1 succeeded"; fi
  grep -qxF "An error occurred ($code) when calling the $op operation: $msg" "$dir/err" \
    || fail "aws kms $1: expected ($code) '$msg', got: $(cat "$dir/err")"
}
step "answers: tags"
akey=$(aws kms create-key --query KeyMetadata.KeyId --output text)
akarn=$(aws kms describe-key --key-id "$akey" --query KeyMetadata.Arn --output text)
answers TagException "Duplicate tag keys" tag-resource --key-id "$akey" --tags TagKey=a,TagValue=1 TagKey=a,TagValue=2
fifty=$(for i in $(seq 0 49); do printf 'TagKey=k%02d,TagValue=v ' "$i"; done)
# shellcheck disable=SC2086 # one argument per tag
answers TagException "Too many tags" create-key --tags $fifty TagKey=k50,TagValue=v
# shellcheck disable=SC2086
aws kms tag-resource --key-id "$akey" --tags $fifty
answers TagException "Too many tags" tag-resource --key-id "$akey" --tags TagKey=one-more,TagValue=v
step "answers: alias names"
answers ValidationException 'Alias must start with the prefix "alias/". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html' \
  create-alias --alias-name my-alias --target-key-id "$akey"
answers NotAuthorizedException "" create-alias --alias-name alias/aws/mine --target-key-id "$akey"
step "answers: key ids"
other=eu-west-1; [ "$AWS_REGION" = "$other" ] && other=eu-west-2
answers NotFoundException "Invalid arn $other" describe-key --key-id "arn:aws:kms:$other:${akarn#arn:aws:kms:*:}"
mrk=mrk-d3b95762d3b95762d3b95762d3b95762
answers NotFoundException "Key '${akarn%key/*}key/$mrk' does not exist" describe-key --key-id "$mrk"
step "answers: key types, states and parameters"
hkey=$(aws kms create-key --key-spec HMAC_256 --key-usage GENERATE_VERIFY_MAC --query KeyMetadata.KeyId --output text)
aws kms encrypt --key-id "$akey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/ablob"
answers IncorrectKeyException "The key ID in the request does not identify a CMK that can perform this operation." \
  decrypt --key-id "$hkey" --ciphertext-blob "fileb://$dir/ablob"
rkey=$(aws kms create-key --key-spec RSA_2048 --key-usage ENCRYPT_DECRYPT --query KeyMetadata.KeyId --output text)
rarn=$(aws kms describe-key --key-id "$rkey" --query KeyMetadata.Arn --output text)
answers UnsupportedOperationException "" rotate-key-on-demand --key-id "$rkey"
aws kms disable-key --key-id "$rkey"
answers DisabledException "$rarn is disabled." rotate-key-on-demand --key-id "$rkey"
aws kms enable-key --key-id "$rkey"
head -c 215 /dev/zero > "$dir/215"
answers ValidationException "Algorithm RSAES_OAEP_SHA_1 and key spec RSA_2048 cannot encrypt data larger than 214 bytes." \
  encrypt --key-id "$rkey" --encryption-algorithm RSAES_OAEP_SHA_1 --plaintext "fileb://$dir/215"
answers ValidationException "NumberOfBytes is required." generate-random
answers ValidationException "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys." \
  create-key --key-spec HMAC_256
answers UnsupportedOperationException "$akarn origin is AWS_KMS which is not valid for this operation." \
  get-parameters-for-import --key-id "$akey" --wrapping-algorithm RSAES_OAEP_SHA_256 --wrapping-key-spec RSA_2048
xkey=$(aws kms create-key --key-spec ECC_NIST_P256 --key-usage KEY_AGREEMENT --query KeyMetadata.KeyId --output text)
printf 'InvalidPublicKey' > "$dir/badpub"
answers ValidationException "" derive-shared-secret --key-id "$xkey" --key-agreement-algorithm ECDH --public-key "fileb://$dir/badpub"
answers ValidationException "1 validation error detected: Value 'INVALID' at 'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_224, HMAC_SHA_512]" \
  generate-mac --key-id "$hkey" --mac-algorithm INVALID --message "fileb://$dir/plain"

step "multi-Region keys: create, replicate, encrypt in one Region and decrypt in the other"
mother=eu-west-1; [ "$AWS_REGION" = "$mother" ] && mother=eu-west-2
mkey=$(aws kms create-key --multi-region --query KeyMetadata.KeyId --output text)
[[ $mkey =~ ^mrk-[0-9a-f]{32}$ ]] || fail "create-key --multi-region returned '$mkey'"
state=$(aws kms replicate-key --key-id "$mkey" --replica-region "$mother" --query ReplicaKeyMetadata.KeyState --output text)
[ "$state" = Creating ] || fail "replicate-key state '$state'"
wait_mrk() { # region, query, value: poll describe-key until the query gives value
  local got
  for _ in $(seq 100); do
    got=$(aws kms describe-key --region "$1" --key-id "$mkey" --query "KeyMetadata.$2" --output text)
    [ "$got" = "$3" ] && return 0
    sleep 0.1
  done
  fail "describe-key in $1: $2 is '$got', not '$3'"
}
wait_mrk "$mother" KeyState Enabled
wait_mrk "$mother" MultiRegionConfiguration.MultiRegionKeyType REPLICA
aws kms encrypt --key-id "$mkey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/mblob"
aws kms decrypt --region "$mother" --ciphertext-blob "fileb://$dir/mblob" --query Plaintext --output text | base64 -d > "$dir/mback"
cmp -s "$dir/plain" "$dir/mback" || fail "the replica decrypted different plaintext"
aws kms encrypt --region "$mother" --key-id "$mkey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/mblob2"
aws kms decrypt --ciphertext-blob "fileb://$dir/mblob2" --query Plaintext --output text | base64 -d > "$dir/mback"
cmp -s "$dir/plain" "$dir/mback" || fail "the primary decrypted different plaintext"
marn=$(aws kms describe-key --region "$mother" --key-id "$mkey" --query KeyMetadata.Arn --output text)
answers UnsupportedOperationException "$marn is not a multi-Region primary key." \
  replicate-key --region "$mother" --key-id "$mkey" --replica-region ap-south-1
answers AlreadyExistsException "Multi-Region key ${marn/$mother/$AWS_REGION} already has a key in Region $mother: $marn." \
  replicate-key --key-id "$mkey" --replica-region "$mother"
step "multi-Region keys: rotation of the primary is the replica's"
aws kms rotate-key-on-demand --key-id "$mkey" >/dev/null
[ "$(aws kms list-key-rotations --region "$mother" --key-id "$mkey" --query 'length(Rotations)' --output text)" = 1 ] \
  || fail "the replica does not list the primary's rotation"
step "multi-Region keys: update-primary-region, then the primary waits for its replica"
aws kms update-primary-region --key-id "$mkey" --primary-region "$mother"
wait_mrk "$mother" MultiRegionConfiguration.MultiRegionKeyType PRIMARY
wait_mrk "$mother" KeyState Enabled
wait_mrk "$AWS_REGION" KeyState Enabled
state=$(aws kms schedule-key-deletion --region "$mother" --key-id "$mkey" --pending-window-in-days 7 --query KeyState --output text)
[ "$state" = PendingReplicaDeletion ] || fail "schedule-key-deletion of a primary with a replica: state '$state'"
state=$(aws kms schedule-key-deletion --key-id "$mkey" --pending-window-in-days 7 --query KeyState --output text)
[ "$state" = PendingDeletion ] || fail "schedule-key-deletion of the replica: state '$state'"

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

# External key stores (issue 17): the data directory's own XKS proxy,
# configured from DIR/xks.env (what AWS's XKS proxy test client reads),
# used by the same hsmkms as an EXTERNAL_KEY_STORE custom key store.
step "external key store: xks.env is private and names the proxy and its keys"
xenv="$dir/data/xks.env"
[ "$(stat -c %a "$xenv")" = 600 ] || fail "xks.env has mode $(stat -c %a "$xenv")"
xks_var() { sed -n "s/^$1=//p" "$xenv"; }
for v in XKS_PROXY_HOST URI_PREFIX SIGV4_ACCESS_KEY_ID SIGV4_SECRET_ACCESS_KEY REGION KEY_ID ENCRYPT_ONLY_KEY_ID DECRYPT_ONLY_KEY_ID IMPOTENT_KEY_ID; do
  [ -n "$(xks_var "$v")" ] || fail "xks.env lacks $v"
done
[ "$(xks_var XKS_PROXY_HOST)" = "127.0.0.1:$xks_port" ] || fail "XKS_PROXY_HOST is $(xks_var XKS_PROXY_HOST)"

step "external key store: create on the data directory's proxy, connect"
# JSON input: the aws CLI v1 would fetch an https:// parameter as a URL.
printf '{"CustomKeyStoreName":"cli-xks","CustomKeyStoreType":"EXTERNAL_KEY_STORE","XksProxyConnectivity":"PUBLIC_ENDPOINT","XksProxyUriEndpoint":"https://localhost","XksProxyUriPath":"/%s/kms/xks/v1","XksProxyAuthenticationCredential":{"AccessKeyId":"%s","RawSecretAccessKey":"%s"}}' \
  "$(xks_var URI_PREFIX)" "$(xks_var SIGV4_ACCESS_KEY_ID)" "$(xks_var SIGV4_SECRET_ACCESS_KEY)" > "$dir/xks-store.json"
xcks=$(aws kms create-custom-key-store --cli-input-json "file://$dir/xks-store.json" --query CustomKeyStoreId --output text)
[[ $xcks =~ ^cks-[0-9a-f]{17}$ ]] || fail "create-custom-key-store (EXTERNAL_KEY_STORE) returned '$xcks'"
aws kms connect-custom-key-store --custom-key-store-id "$xcks"
for _ in $(seq 1 50); do
  s=$(aws kms describe-custom-key-stores --custom-key-store-id "$xcks" --query 'CustomKeyStores[0].ConnectionState' --output text)
  [ "$s" = CONNECTING ] || break
  sleep 0.1
done
[ "$s" = CONNECTED ] || fail "external key store is $s: $(aws kms describe-custom-key-stores --custom-key-store-id "$xcks")"
path=$(aws kms describe-custom-key-stores --custom-key-store-id "$xcks" --query 'CustomKeyStores[0].XksProxyConfiguration.UriPath' --output text)
[ "$path" = "/$(xks_var URI_PREFIX)/kms/xks/v1" ] || fail "XksProxyConfiguration.UriPath is '$path'"
aws kms describe-custom-key-stores --custom-key-store-id "$xcks" | grep -q "$(xks_var SIGV4_SECRET_ACCESS_KEY)" && fail "the secret is shown"

step "external key store: keys of the wrong usage are refused, the right one accepted"
answers XksKeyInvalidConfigurationException "The external key associated with this KMS key in an external key store does not support the requested operation. Enable the operation on the key in your external key manager, and try the request again." \
  create-key --custom-key-store-id "$xcks" --origin EXTERNAL_KEY_STORE --xks-key-id "$(xks_var ENCRYPT_ONLY_KEY_ID)"
xkey=$(aws kms create-key --custom-key-store-id "$xcks" --origin EXTERNAL_KEY_STORE --xks-key-id "$(xks_var KEY_ID)" --query KeyMetadata.KeyId --output text)
xid=$(aws kms describe-key --key-id "$xkey" --query KeyMetadata.XksKeyConfiguration.Id --output text)
[ "$xid" = "$(xks_var KEY_ID)" ] || fail "XksKeyConfiguration.Id is '$xid'"

step "external key store: double-encrypted round trip"
aws kms encrypt --key-id "$xkey" --plaintext "fileb://$dir/plain" --encryption-context purpose=xks \
  --query CiphertextBlob --output text | base64 -d > "$dir/xblob"
aws kms decrypt --ciphertext-blob "fileb://$dir/xblob" --encryption-context purpose=xks --query Plaintext --output text | base64 -d > "$dir/xback"
cmp -s "$dir/plain" "$dir/xback" || fail "decrypt through the external key store returned different plaintext"

step "external key store: the external key disabled by the admin command, then enabled"
"$bin" xks-keys disable --data-dir "$dir/data" --id "$(xks_var KEY_ID)" >/dev/null
# The running proxy reads another process's change within a second.
for _ in $(seq 1 50); do
  aws kms decrypt --ciphertext-blob "fileb://$dir/xblob" --encryption-context purpose=xks >/dev/null 2>&1 || break
  sleep 0.1
done
answers KMSInvalidStateException "The external key associated with this KMS key in an external key store is not enabled in the external key manager. Enable the external key in the external key manager and retry the request." \
  decrypt --ciphertext-blob "fileb://$dir/xblob" --encryption-context purpose=xks
"$bin" xks-keys enable --data-dir "$dir/data" --id "$(xks_var KEY_ID)" >/dev/null
for _ in $(seq 1 50); do
  aws kms decrypt --ciphertext-blob "fileb://$dir/xblob" --encryption-context purpose=xks >/dev/null 2>&1 && break
  sleep 0.1
done
aws kms decrypt --ciphertext-blob "fileb://$dir/xblob" --encryption-context purpose=xks --query Plaintext --output text | base64 -d > "$dir/xback"
cmp -s "$dir/plain" "$dir/xback" || fail "decrypt after enabling the external key returned different plaintext"

step "graceful shutdown"
kill -TERM "$pid"
wait "$pid" || fail "server exited with status $?"
pid=

# Access control, as README's "Separation of duties with the stock CLI":
# the same data directory served with --config and two more principals that
# have no identity policy, so only the key policy gives them anything.
step "access control: serve --config with a key administrator and a key user"
data="$dir/data"
for who in keyadmin keyuser; do
  (umask 077; head -c 30 /dev/urandom | base64 | tr -d '/+=' > "$data/secrets/$who-secret")
done
{
  sed '/^clusters:/,$d' "$data/hsmkms.yaml"
  printf '    - access_key_id: AKIAKEYADMIN00000001\n      secret_file: secrets/keyadmin-secret\n'
  printf '      account_id: "111122223333"\n      arn: arn:aws:iam::111122223333:user/keyadmin\n'
  printf '    - access_key_id: AKIAKEYUSER000000001\n      secret_file: secrets/keyuser-secret\n'
  printf '      account_id: "111122223333"\n      arn: arn:aws:iam::111122223333:role/app\n'
} > "$data/access.yaml"
creds="$dir/access-credentials"
{
  cat "$AWS_SHARED_CREDENTIALS_FILE"
  printf '\n[keyadmin]\naws_access_key_id = AKIAKEYADMIN00000001\naws_secret_access_key = %s\n' "$(cat "$data/secrets/keyadmin-secret")"
  printf '\n[keyuser]\naws_access_key_id = AKIAKEYUSER000000001\naws_secret_access_key = %s\n' "$(cat "$data/secrets/keyuser-secret")"
} > "$creds"
chmod 600 "$creds"
export AWS_SHARED_CREDENTIALS_FILE=$creds
"$bin" serve --config "$data/access.yaml" >>"$dir/out" 2>>"$dir/log" &
pid=$!
for _ in $(seq 1 100); do
  aws kms list-keys >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || fail "serve --config exited"
  sleep 0.1
done

cat > "$dir/policy.json" <<'JSON'
{"Version": "2012-10-17", "Statement": [
  {"Sid": "Administrators", "Effect": "Allow",
   "Principal": {"AWS": ["arn:aws:iam::111122223333:user/keyadmin", "arn:aws:iam::111122223333:user/hsmkms-admin"]},
   "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
              "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
              "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"], "Resource": "*"},
  {"Sid": "Users", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/app"},
   "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "FinanceOnly", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:role/app"},
   "Action": "kms:Decrypt", "Resource": "*",
   "Condition": {"StringNotEquals": {"kms:EncryptionContext:dept": "finance"}}}]}
JSON
step "access control: the admin creates a key with the separation-of-duties policy"
skey=$(aws kms create-key --policy "file://$dir/policy.json" --query KeyMetadata.KeyId --output text)
denied() { # profile, then the command's arguments: must fail with AccessDeniedException
  local profile=$1; shift
  if AWS_PROFILE=$profile aws kms "$@" 2>"$dir/err" >/dev/null; then fail "$profile may $1"; fi
  grep -q AccessDeniedException "$dir/err" || fail "expected AccessDeniedException for $profile $1, got: $(cat "$dir/err")"
}
step "access control: the key administrator manages but cannot use the key"
AWS_PROFILE=keyadmin aws kms disable-key --key-id "$skey"
AWS_PROFILE=keyadmin aws kms enable-key --key-id "$skey"
denied keyadmin encrypt --key-id "$skey" --plaintext "fileb://$dir/plain"
step "access control: the key user uses but cannot manage it, and decrypts only finance data"
AWS_PROFILE=keyuser aws kms encrypt --key-id "$skey" --plaintext "fileb://$dir/plain" --encryption-context dept=finance \
  --query CiphertextBlob --output text | base64 -d > "$dir/fin"
AWS_PROFILE=keyuser aws kms decrypt --ciphertext-blob "fileb://$dir/fin" --encryption-context dept=finance >/dev/null
AWS_PROFILE=keyuser aws kms encrypt --key-id "$skey" --plaintext "fileb://$dir/plain" --encryption-context dept=canteen \
  --query CiphertextBlob --output text | base64 -d > "$dir/can"
denied keyuser decrypt --ciphertext-blob "fileb://$dir/can" --encryption-context dept=canteen
denied keyuser disable-key --key-id "$skey"
grep -q 'authz="allow kms:Encrypt on arn:aws:kms:[^"]* by key policy statement Users"' "$dir/log" \
  || fail "the request log does not show the decision"

step "import key material: create-key --origin EXTERNAL is PendingImport"
ikey=$(aws kms create-key --origin EXTERNAL --query KeyMetadata.KeyId --output text)
state=$(aws kms describe-key --key-id "$ikey" --query KeyMetadata.KeyState --output text)
[ "$state" = PendingImport ] || fail "an EXTERNAL key is $state"
import_material() { # algorithm, material file: wraps it as AWS's documentation shows, imports it
  local alg=$1 material=$2 md=sha256
  aws kms get-parameters-for-import --key-id "$ikey" --wrapping-algorithm "$alg" --wrapping-key-spec RSA_3072 \
    --query '[PublicKey,ImportToken]' --output text > "$dir/params"
  cut -f1 "$dir/params" | base64 -d > "$dir/WrappingPublicKey.bin"
  cut -f2 "$dir/params" | base64 -d > "$dir/ImportToken.bin"
  case $alg in *SHA_1) md=sha1 ;; esac
  local oaep=(-inkey "$dir/WrappingPublicKey.bin" -keyform DER -pubin -pkeyopt rsa_padding_mode:oaep
    -pkeyopt "rsa_oaep_md:$md" -pkeyopt "rsa_mgf1_md:$md")
  case $alg in
  RSA_AES_KEY_WRAP_*)
    openssl rand -out "$dir/aes-key.bin" 32
    openssl enc -id-aes256-wrap-pad -K "$(xxd -p -c 64 "$dir/aes-key.bin")" -iv A65959A6 \
      -in "$material" -out "$dir/key-material-wrapped.bin"
    openssl pkeyutl -encrypt -in "$dir/aes-key.bin" -out "$dir/aes-key-wrapped.bin" "${oaep[@]}"
    cat "$dir/aes-key-wrapped.bin" "$dir/key-material-wrapped.bin" > "$dir/EncryptedKeyMaterial.bin" ;;
  *)
    openssl pkeyutl -encrypt -in "$material" -out "$dir/EncryptedKeyMaterial.bin" "${oaep[@]}" ;;
  esac
  aws kms import-key-material --key-id "$ikey" --encrypted-key-material "fileb://$dir/EncryptedKeyMaterial.bin" \
    --import-token "fileb://$dir/ImportToken.bin" --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE "${@:3}"
}
openssl rand -out "$dir/PlaintextKeyMaterial.bin" 32
step "import key material: RSA_AES_KEY_WRAP_SHA_256 with openssl enc -id-aes256-wrap-pad and pkeyutl"
import_material RSA_AES_KEY_WRAP_SHA_256 "$dir/PlaintextKeyMaterial.bin" > /dev/null
state=$(aws kms describe-key --key-id "$ikey" --query KeyMetadata.KeyState --output text)
[ "$state" = Enabled ] || fail "the key is $state after import"
aws kms encrypt --key-id "$ikey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/iblob"
step "import key material: delete-imported-key-material, then RSAES_OAEP_SHA_256 of the same material"
aws kms delete-imported-key-material --key-id "$ikey" > /dev/null
refused() { # exception code, then the aws kms arguments
  local code=$1; shift
  if aws kms "$@" 2>"$dir/err" >/dev/null; then fail "aws kms $1 succeeded"; fi
  grep -q "($code)" "$dir/err" || fail "aws kms $1: expected $code, got: $(cat "$dir/err")"
}
refused KMSInvalidStateException decrypt --ciphertext-blob "fileb://$dir/iblob"
openssl rand -out "$dir/other.bin" 32
refused IncorrectKeyMaterialException import-key-material --key-id "$ikey" --encrypted-key-material "fileb://$dir/EncryptedKeyMaterial.bin" \
  --import-token "fileb://$dir/ImportToken.bin" --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE --import-type NEW_KEY_MATERIAL
if import_material RSAES_OAEP_SHA_256 "$dir/other.bin" 2>"$dir/err" >/dev/null; then fail "other material was imported"; fi
grep -q IncorrectKeyMaterialException "$dir/err" || fail "expected IncorrectKeyMaterialException, got: $(cat "$dir/err")"
import_material RSAES_OAEP_SHA_256 "$dir/PlaintextKeyMaterial.bin" > /dev/null
aws kms decrypt --ciphertext-blob "fileb://$dir/iblob" --query Plaintext --output text | base64 -d > "$dir/iback"
cmp -s "$dir/plain" "$dir/iback" || fail "the re-imported key decrypts to different plaintext"
step "import key material: NEW_KEY_MATERIAL, then rotate-key-on-demand"
import_material RSA_AES_KEY_WRAP_SHA_1 "$dir/other.bin" --import-type NEW_KEY_MATERIAL > /dev/null
aws kms list-key-rotations --key-id "$ikey" --include-key-material ALL_KEY_MATERIAL \
  --query 'Rotations[].KeyMaterialState' --output text | grep -q PENDING_ROTATION || fail "no material pending rotation"
aws kms rotate-key-on-demand --key-id "$ikey" > /dev/null
aws kms decrypt --ciphertext-blob "fileb://$dir/iblob" --query Plaintext --output text | base64 -d > "$dir/iback"
cmp -s "$dir/plain" "$dir/iback" || fail "after rotation the old ciphertext decrypts to different plaintext"

step "import key material: an ECC_NIST_EDWARDS25519 key from openssl genpkey -algorithm ed25519"
ikey=$(aws kms create-key --origin EXTERNAL --key-spec ECC_NIST_EDWARDS25519 --key-usage SIGN_VERIFY --query KeyMetadata.KeyId --output text)
openssl genpkey -algorithm ed25519 -outform DER -out "$dir/ed25519.der"
openssl pkey -inform DER -in "$dir/ed25519.der" -pubout -outform DER -out "$dir/ed25519.pub"
import_material RSAES_OAEP_SHA_256 "$dir/ed25519.der" > /dev/null
aws kms get-public-key --key-id "$ikey" --query PublicKey --output text | base64 -d > "$dir/ed25519.kms.pub"
cmp -s "$dir/ed25519.pub" "$dir/ed25519.kms.pub" || fail "get-public-key of the imported Ed25519 key is not openssl's public key"
aws kms sign --key-id "$ikey" --message "fileb://$dir/msg" --message-type RAW --signing-algorithm ED25519_SHA_512 \
  --query Signature --output text | base64 -d > "$dir/ed25519.sig"
openssl pkeyutl -verify -pubin -inkey "$dir/ed25519.pub" -keyform DER -rawin -in "$dir/msg" -sigfile "$dir/ed25519.sig" > /dev/null \
  || fail "openssl does not verify the imported Ed25519 key's signature"
openssl genpkey -algorithm ed25519 -outform DER -out "$dir/ed25519-other.der"
if import_material RSA_AES_KEY_WRAP_SHA_256 "$dir/ed25519-other.der" 2>"$dir/err" >/dev/null; then fail "other Ed25519 material was imported"; fi
grep -q IncorrectKeyMaterialException "$dir/err" || fail "expected IncorrectKeyMaterialException, got: $(cat "$dir/err")"

step "import key material: a multi-Region key, its replica importing the same material on its own"
ikey=$(aws kms create-key --origin EXTERNAL --multi-region --query KeyMetadata.KeyId --output text)
[[ $ikey =~ ^mrk-[0-9a-f]{32}$ ]] || fail "create-key --origin EXTERNAL --multi-region returned '$ikey'"
import_material RSAES_OAEP_SHA_256 "$dir/PlaintextKeyMaterial.bin" > /dev/null
aws kms replicate-key --key-id "$ikey" --replica-region "$mother" > /dev/null
mkey=$ikey wait_mrk "$mother" KeyState PendingImport
if AWS_REGION=$mother AWS_DEFAULT_REGION=$mother import_material RSAES_OAEP_SHA_256 "$dir/other.bin" 2>"$dir/err" >/dev/null; then fail "the replica imported other material"; fi
grep -q IncorrectKeyMaterialException "$dir/err" || fail "expected IncorrectKeyMaterialException, got: $(cat "$dir/err")"
AWS_REGION=$mother AWS_DEFAULT_REGION=$mother import_material RSA_AES_KEY_WRAP_SHA_256 "$dir/PlaintextKeyMaterial.bin" > /dev/null
mkey=$ikey wait_mrk "$mother" KeyState Enabled
aws kms encrypt --key-id "$ikey" --plaintext "fileb://$dir/plain" --query CiphertextBlob --output text | base64 -d > "$dir/mblob"
aws kms decrypt --region "$mother" --ciphertext-blob "fileb://$dir/mblob" --query Plaintext --output text | base64 -d > "$dir/mback"
cmp -s "$dir/plain" "$dir/mback" || fail "the imported replica decrypted different plaintext"
aws kms delete-imported-key-material --key-id "$ikey" > /dev/null
mkey=$ikey wait_mrk "$mother" KeyState Enabled
aws kms decrypt --region "$mother" --ciphertext-blob "fileb://$dir/mblob" --query Plaintext --output text | base64 -d > "$dir/mback"
cmp -s "$dir/plain" "$dir/mback" || fail "the replica lost its material with the primary's"

step "graceful shutdown (serve --config)"
kill -TERM "$pid"
wait "$pid" || fail "server exited with status $?"
pid=
echo "cli-test: all steps passed" >&2
