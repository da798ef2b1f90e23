package miss

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests open an rtnetlink socket subscribed to RTNLGRP_NEIGH in the
// test's own network namespace and only read from it: they add, change and
// send nothing. What the listener does with real misses needs a namespace
// with a VXLAN device and is tested end to end (test/netns).

func listen(t *testing.T, readBuffer int) *Listener {
	t.Helper()
	l, err := Listen(readBuffer)
	if err != nil {
		t.Fatalf("Listen(%d): %v", readBuffer, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestListen(t *testing.T) {
	l := listen(t, 0)
	if s := l.Stats(); s != (ListenerStats{}) {
		t.Errorf("Stats of a new listener = %+v, want zero", s)
	}
	if _, err := l.ReadBuffer(); err != nil {
		t.Errorf("ReadBuffer: %v", err)
	}
}

func TestListenReadBuffer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: without CAP_NET_ADMIN the receive buffer is capped by net.core.rmem_max, so DefaultReadBuffer cannot be checked")
	}
	for _, tt := range []struct{ ask, want int }{
		{0, DefaultReadBuffer},
		{-1, DefaultReadBuffer},
		{DefaultReadBuffer, DefaultReadBuffer},
		{1 << 20, 1 << 20},
	} {
		l := listen(t, tt.ask)
		got, err := l.ReadBuffer()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("Listen(%d): receive buffer %d bytes", tt.ask, got)
		// The kernel reports twice what was set (bookkeeping overhead).
		if got < tt.want {
			t.Errorf("Listen(%d): receive buffer %d bytes, want at least %d (net.core.rmem_max is not meant to cap it for root)", tt.ask, got, tt.want)
		}
		if got > 2*tt.want {
			t.Errorf("Listen(%d): receive buffer %d bytes, want at most 2*%d: the size asked for is not the one set", tt.ask, got, tt.want)
		}
		l.Close()
	}
}

// runAsync runs l.Run and returns a channel with its result.
func runAsync(ctx context.Context, l *Listener) <-chan error {
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, func(*Miss) {}, nil) }()
	return done
}

func waitRun(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("Run did not return within %v", within)
		return nil
	}
}

func TestRunReturnsWhenCancelled(t *testing.T) {
	l := listen(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAsync(ctx, l)

	// Let Run block in its read.
	select {
	case err := <-done:
		t.Fatalf("Run returned before cancel: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	start := time.Now()
	cancel()
	err := waitRun(t, done, time.Second)
	if !errors.Is(err, context.Canceled) || err != ctx.Err() {
		t.Errorf("Run = %v, want ctx.Err() (%v)", err, ctx.Err())
	}
	t.Logf("Run returned %v after cancel", time.Since(start))
}

func TestRunReturnsAtContextDeadline(t *testing.T) {
	l := listen(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := waitRun(t, runAsync(ctx, l), time.Second+100*time.Millisecond)
	if err != context.DeadlineExceeded {
		t.Errorf("Run = %v, want %v", err, context.DeadlineExceeded)
	}
}

func TestRunAlreadyCancelled(t *testing.T) {
	l := listen(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitRun(t, runAsync(ctx, l), time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want %v", err, context.Canceled)
	}
}

func TestRunReturnsWhenClosed(t *testing.T) {
	l := listen(t, 0)
	done := runAsync(context.Background(), l)
	time.Sleep(100 * time.Millisecond)
	l.Close()
	if err := waitRun(t, done, time.Second); err == nil {
		t.Error("Run on a closed socket returned nil, want an error")
	}
	// And on a socket closed before Run starts.
	if err := waitRun(t, runAsync(context.Background(), l), time.Second); err == nil {
		t.Error("Run after Close returned nil, want an error")
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestRunAgainBlocks(t *testing.T) {
	// Run sleeps in a blocking recvfrom bounded by a receive timeout, and
	// sets the socket up so at each start. A second Run on the same
	// listener, after a cancelled one, must block in its read again, not
	// spin on a read that returns at once until its own context ends.
	l := listen(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitRun(t, runAsync(ctx, l), time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("first Run = %v, want %v", err, context.Canceled)
	}

	const window = 500 * time.Millisecond
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	before := cpuTime(t)
	done := runAsync(ctx, l)
	select {
	case err := <-done:
		t.Fatalf("second Run returned at once: %v", err)
	case <-time.After(window):
	}
	used := cpuTime(t) - before
	cancel()
	if err := waitRun(t, done, time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("second Run = %v, want %v", err, context.Canceled)
	}
	if used > window/3 {
		t.Errorf("the process used %v of CPU in %v while Run should have been blocked in a read", used, window)
	}
}
