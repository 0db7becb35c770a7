package kms_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREADMEOperationTable keeps the README's support table true: one row
// per operation of the model, "supported" exactly for those implemented.
func TestREADMEOperationTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	rows := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\| ([A-Z][A-Za-z]+) \| (supported|not yet)`).FindAllSubmatch(readme, -1) {
		rows[string(m[1])] = string(m[2])
	}
	svc := kms.New(kms.Config{})
	for _, op := range wire.Operations() {
		want := "not yet"
		if svc.Supported(op) {
			want = "supported"
		}
		assert.Equal(t, want, rows[op], op)
	}
}
