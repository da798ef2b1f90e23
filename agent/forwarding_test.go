package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestForwardingWarningStaysTrue: forwarding turned on within the grace
// (dockerd starting after vtepd) is no warning; off past the grace is one,
// said once, and its end is said too.
func TestForwardingWarningStaysTrue(t *testing.T) {
	var fwd atomic.Bool
	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchForwarding(ctx, zap.New(core), "ipv4", "net.ipv4.ip_forward", func() (bool, error) { return fwd.Load(), nil }, 200*time.Millisecond, 10*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	count := func(snippet string) int { return logs.FilterMessageSnippet(snippet).Len() }
	wait := func(cond func() bool, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, logs.All())
			}
		}
	}
	time.Sleep(50 * time.Millisecond) // off, but within the grace
	fwd.Store(true)
	time.Sleep(300 * time.Millisecond) // past the grace, on
	if n := count("forwarding is off"); n != 0 {
		t.Fatalf("warned %d times though forwarding came on within the grace", n)
	}
	fwd.Store(false)
	wait(func() bool { return count("forwarding is off") == 1 }, "no warning once off past the grace")
	time.Sleep(100 * time.Millisecond)
	if n := count("forwarding is off"); n != 1 {
		t.Errorf("warned %d times for one episode, want once", n)
	}
	fwd.Store(true)
	wait(func() bool { return count("forwarding is on now") == 1 }, "its end was not said")
}
