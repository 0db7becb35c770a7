package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writes records each Write it gets.
type writes struct {
	mu    sync.Mutex
	calls []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, string(p))
	return len(p), nil
}

func (w *writes) all() (string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.calls, ""), len(w.calls)
}

func TestLineBuffer(t *testing.T) {
	t.Parallel()
	t.Run("batches lines, in order, and flushes at Close", func(t *testing.T) {
		var out writes
		b := newLineBuffer(&out, 1024, time.Hour)
		var want bytes.Buffer
		for i := range 100 {
			line := fmt.Sprintf("line %d\n", i)
			want.WriteString(line)
			n, err := b.Write([]byte(line))
			require.NoError(t, err)
			require.Equal(t, len(line), n)
		}
		_, calls := out.all()
		assert.Less(t, calls, 10, "lines go out in batches as the buffer fills")
		require.NoError(t, b.Close())
		got, _ := out.all()
		assert.Equal(t, want.String(), got, "every line, in order, by Close")
		_, err := b.Write([]byte("after\n"))
		require.NoError(t, err)
		got, _ = out.all()
		assert.True(t, strings.HasSuffix(got, "after\n"), "after Close, written through")
	})
	t.Run("flushes on its own within the interval", func(t *testing.T) {
		var out writes
		b := newLineBuffer(&out, 1024, 10*time.Millisecond)
		defer b.Close()
		b.Write([]byte("one\n"))
		require.Eventually(t, func() bool { got, _ := out.all(); return got == "one\n" }, 5*time.Second, 5*time.Millisecond)
	})
	t.Run("a line longer than the buffer goes straight out, after what is buffered", func(t *testing.T) {
		var out writes
		b := newLineBuffer(&out, 8, time.Hour)
		b.Write([]byte("ab\n"))
		long := strings.Repeat("x", 20) + "\n"
		b.Write([]byte(long))
		got, _ := out.all()
		assert.Equal(t, "ab\n"+long, got)
		require.NoError(t, b.Close())
	})
	t.Run("concurrent writers lose no line", func(t *testing.T) {
		var out writes
		b := newLineBuffer(&out, 256, time.Millisecond)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 200 {
					b.Write(fmt.Appendf(nil, "g%d-%d\n", g, i))
				}
			})
		}
		wg.Wait()
		require.NoError(t, b.Close())
		got, _ := out.all()
		assert.Equal(t, 8*200, strings.Count(got, "\n"))
	})
}
