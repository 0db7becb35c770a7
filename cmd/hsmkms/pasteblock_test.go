package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPasteBlock: the printed block sets what the AWS CLI and SDKs read,
// and says what the clients that read the environment differently need.
func TestPasteBlock(t *testing.T) {
	info := &BootstrapInfo{Endpoint: "https://127.0.0.1:4599", CABundle: "/d/tls/ca.pem", CredentialsFile: "/d/credentials", Region: "us-east-1"}
	block := PasteBlock(info)
	for _, want := range []string{
		"export AWS_ENDPOINT_URL_KMS=https://127.0.0.1:4599\n",
		"export AWS_CA_BUNDLE=/d/tls/ca.pem\n",
		"export AWS_SHARED_CREDENTIALS_FILE=/d/credentials\n",
		// The AWS SDK for JavaScript v3 ignores AWS_CA_BUNDLE.
		"export NODE_EXTRA_CA_CERTS=/d/tls/ca.pem\n",
		// SOPS takes a key ARN.
		`sops --encrypt --kms "$(aws kms describe-key --key-id <KeyId> --query KeyMetadata.Arn --output text)" secrets.yaml`,
		// Vault's awskms seal ignores AWS_ENDPOINT_URL_KMS.
		"seal \"awskms\" {\n    region     = \"us-east-1\"\n    kms_key_id = \"<KeyId>\"\n    endpoint   = \"https://127.0.0.1:4599\"\n  }",
		"AWS_SHARED_CREDENTIALS_FILE=/d/credentials\nand SSL_CERT_FILE=/d/tls/ca.pem",
	} {
		require.Contains(t, block, want)
	}
	exports := regexp.MustCompile(`(?m)^export [A-Z_]+=`).FindAllString(block, -1)
	require.Equal(t, "export AWS_REGION=", exports[len(exports)-1], "AWS_REGION is the last export: scripts wait for it")
	require.False(t, strings.Contains(block, "\t"), "the block is indented with spaces")
}
