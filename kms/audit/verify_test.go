package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sealedTrail is a stopped trail of several files, and its listing.
func sealedTrail(t *testing.T) (string, *listing) {
	t.Helper()
	dir := t.TempDir()
	tr := openTrail(t, Config{Dir: dir, Signer: newSigner(t), MaxFileSize: 2500})
	for i := range 24 {
		_, err := tr.Append(context.Background(), event("GenerateDataKey", i))
		require.NoError(t, err)
	}
	require.NoError(t, tr.Close(context.Background()))
	l, err := list(dir)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(l.trails), 4)
	_, err = Verify(dir, VerifyOptions{})
	require.NoError(t, err)
	return dir, l
}

func fileLines(t *testing.T, path string) [][]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.SplitAfter(b, []byte("\n"))
}

func problem(t *testing.T, err error) *Problem {
	t.Helper()
	var p *Problem
	require.True(t, errors.As(err, &p), "want a *Problem, got %v", err)
	return p
}

func TestVerifyNamesEachKindOfTampering(t *testing.T) {
	t.Parallel()
	t.Run("a byte of a record changed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		name := l.trails[1]
		path := filepath.Join(dir, name)
		ls := fileLines(t, path)
		first, err := parseRecord(bytes.TrimSuffix(ls[1], []byte("\n")))
		require.NoError(t, err)
		ls[1] = bytes.Replace(ls[1], []byte("us-east-1"), []byte("us-east-2"), 1)
		require.NoError(t, os.WriteFile(path, bytes.Join(ls, nil), 0o600))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, name, p.File)
		assert.Equal(t, first.Sequence+1, p.Sequence, "the record after the changed one no longer links to it")
		assert.Contains(t, p.Error(), "was changed, removed or inserted")
		assert.Contains(t, p.Error(), "SHA-256 does not match")
	})
	t.Run("a record removed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		name := l.trails[2]
		path := filepath.Join(dir, name)
		ls := fileLines(t, path)
		removed, err := parseRecord(bytes.TrimSuffix(ls[1], []byte("\n")))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, bytes.Join(append(ls[:1:1], ls[2:]...), nil), 0o600))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, name, p.File)
		assert.Equal(t, 2, p.Line)
		assert.Equal(t, removed.Sequence+1, p.Sequence)
		assert.Contains(t, p.Reason, "missing")
	})
	t.Run("a file removed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		name := l.trails[1]
		require.NoError(t, os.Remove(filepath.Join(dir, name)))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, name, p.File)
		assert.Contains(t, p.Reason, "missing")
	})
	t.Run("the last file truncated", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		name := l.trails[len(l.trails)-1]
		path := filepath.Join(dir, name)
		ls := fileLines(t, path)
		require.NoError(t, os.WriteFile(path, bytes.Join(ls[:len(ls)-2], nil), 0o600), "the last record cut away, at a line end")
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, name, p.File)
		assert.Contains(t, p.Reason, "truncated")
	})
	t.Run("zeros appended to a sealed file", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		name := l.trails[1]
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.Write(make([]byte, 100))
		require.NoError(t, err)
		require.NoError(t, f.Close())
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, name, p.File)
		assert.Contains(t, p.Reason, "100 bytes follow what")
	})
	t.Run("a digest removed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		require.NoError(t, os.Remove(filepath.Join(dir, l.digests[1])))
		require.NoError(t, os.Remove(filepath.Join(dir, l.digests[1]+".sig")))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, l.digests[2], p.File)
		assert.Contains(t, p.Reason, "a digest is missing")
	})
	t.Run("a digest changed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		path := filepath.Join(dir, l.digests[0])
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, bytes.Replace(b, []byte(`"reason": "rotation"`), []byte(`"reason": "stop"    `), 1), 0o600))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, l.digests[0], p.File)
		assert.Contains(t, p.Reason, "signature does not verify")
	})
	t.Run("the first file removed", func(t *testing.T) {
		t.Parallel()
		dir, l := sealedTrail(t)
		require.NoError(t, os.Remove(filepath.Join(dir, l.trails[0])))
		p := problem(t, func() error { _, err := Verify(dir, VerifyOptions{}); return err }())
		assert.Equal(t, l.trails[0], p.File)
	})
}
