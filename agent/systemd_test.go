package agent

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// notifySocket listens where NOTIFY_SOCKET points for the test, as systemd
// does, and returns the messages received so far on each call.
func notifySocket(t *testing.T) func() []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 1024)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	var got []string
	return func() []string {
		for {
			select {
			case m := <-msgs:
				got = append(got, m)
			default:
				return got
			}
		}
	}
}

func count(msgs []string, state string) int {
	n := 0
	for _, m := range msgs {
		if strings.Contains(m, state) {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchdogFollowsTheMissPath: WATCHDOG=1 goes out while the listener's
// loop comes round, stops (with one error logged) when it stands still, and
// resumes when it moves again.
func TestWatchdogFollowsTheMissPath(t *testing.T) {
	received := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "150000") // pinged every 50 ms
	core, logs := observer.New(zap.InfoLevel)
	sd := &systemd{log: zap.New(core)}
	var turns, moving atomic.Uint64
	moving.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sd.watchdog(ctx, turns.Load) }()
	stopTurning := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopTurning:
				return
			case <-time.After(5 * time.Millisecond):
				turns.Add(moving.Load())
			}
		}
	}()
	defer close(stopTurning)

	waitFor(t, "three watchdog pings", func() bool { return count(received(), "WATCHDOG=1") >= 3 })

	moving.Store(0)
	waitFor(t, "the stuck miss path to be logged", func() bool { return logs.FilterMessageSnippet("has not come round").Len() == 1 })
	before := count(received(), "WATCHDOG=1")
	time.Sleep(300 * time.Millisecond) // six ticks
	if after := count(received(), "WATCHDOG=1"); after != before {
		t.Errorf("%d pings while the miss path stood still", after-before)
	}
	if n := logs.FilterMessageSnippet("has not come round").Len(); n != 1 {
		t.Errorf("the stuck miss path was logged %d times, want once", n)
	}

	moving.Store(1)
	waitFor(t, "pings to resume", func() bool { return count(received(), "WATCHDOG=1") > before })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watchdog returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not return when its context ended")
	}
}

// TestWatchdogOff: without WATCHDOG_USEC the watchdog returns at once and
// sends nothing; without NOTIFY_SOCKET, notify is silent.
func TestWatchdogOff(t *testing.T) {
	received := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "")
	sd := &systemd{log: zap.NewNop()}
	done := make(chan error, 1)
	go func() { done <- sd.watchdog(context.Background(), func() uint64 { return 0 }) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog without WATCHDOG_USEC did not return")
	}
	// A marker sent after watchdog returned arrives after anything it sent:
	// once the marker is in, so is any stray ping.
	sd.notify("X_TEST_MARKER=1")
	waitFor(t, "the marker", func() bool { return count(received(), "X_TEST_MARKER=1") == 1 })
	if got := received(); len(got) != 1 {
		t.Errorf("sent %q before the marker", got[:len(got)-1])
	}
	t.Setenv("NOTIFY_SOCKET", "")
	sd.notify("READY=1") // must not panic or block
}
