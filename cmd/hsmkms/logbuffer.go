package main

import (
	"io"
	"sync"
	"time"
)

// lineBuffer batches the request log's lines into few writes. One line
// per request cost a write(2) per request, a thirtieth of the server's
// CPU per Encrypt of 1 KiB. Lines reach out in the order they were
// written: within every of being logged, when the buffer fills, and at
// Close; a crash loses at most the last every of request lines, as with
// nginx's buffered access_log. The request log is a log, not a record:
// nothing acknowledged depends on it. Safe for concurrent use.
type lineBuffer struct {
	mu   sync.Mutex
	buf  []byte
	out  io.Writer
	stop chan struct{}
	done chan struct{}
}

// newLineBuffer buffers up to size bytes for out and flushes every every,
// until Close.
func newLineBuffer(out io.Writer, size int, every time.Duration) *lineBuffer {
	b := &lineBuffer{buf: make([]byte, 0, size), out: out, stop: make(chan struct{}), done: make(chan struct{})}
	go b.run(every)
	return b
}

// Write takes one whole line (hclog writes each with a single call).
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > cap(b.buf) {
		return b.out.Write(p)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lineBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.out.Write(b.buf)
	b.buf = b.buf[:0] // a failed write is not retried: the log must not block the server
	return err
}

// Flush writes what is buffered.
func (b *lineBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *lineBuffer) run(every time.Duration) {
	defer close(b.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.Flush()
		case <-b.stop:
			b.Flush()
			return
		}
	}
}

// Close flushes and stops the flusher; lines written after it are
// written through at once.
func (b *lineBuffer) Close() error {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = b.buf[:0:0] // from now on every line goes straight out
	return nil
}
