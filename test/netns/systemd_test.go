package netns_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// notifyListener is the socket systemd gives a Type=notify service, as a
// test stands it up: every datagram vtepd sends, in order.
type notifyListener struct {
	path string
	mu   sync.Mutex
	msgs []string
	// atReady records, when READY=1 arrives, whether the subnet file
	// existed: it must be written before the service counts as started.
	atReady func() bool
	readyOK *bool
}

func listenNotify(t *testing.T, atReady func() bool) *notifyListener {
	t.Helper()
	n := &notifyListener{path: filepath.Join(t.TempDir(), "notify.sock"), atReady: atReady}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := string(buf[:k])
			n.mu.Lock()
			if strings.Contains(m, "READY=1") && n.readyOK == nil {
				ok := n.atReady()
				n.readyOK = &ok
			}
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifyListener) received() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// count is how many messages held the line state, e.g. READY=1.
func (n *notifyListener) count(state string) int {
	c := 0
	for _, m := range n.received() {
		for _, l := range strings.Split(m, "\n") {
			if l == state {
				c++
			}
		}
	}
	return c
}

// TestSystemdNotify runs vtepd as systemd runs a Type=notify unit with a
// watchdog: READY=1 only once device, lease and table are ready (not while
// it waits for a network config, which STATUS= says), WATCHDOG=1 while it
// runs, STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtsd")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	h, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	subnetFileThere := func() bool {
		_, err := os.Stat(h.SubnetFile)
		return err == nil
	}
	n := listenNotify(t, subnetFileThere)
	h.Env = []string{"NOTIFY_SOCKET=" + n.path, "WATCHDOG_USEC=600000"}
	p, err := h.StartVtepdNoWait()
	if err != nil {
		t.Fatal(err)
	}
	// No network config yet: vtepd waits, and says so.
	err = netns.Poll(10*time.Second, func() error {
		for _, m := range n.received() {
			if strings.Contains(m, "STATUS=") && strings.Contains(m, "config") {
				return nil
			}
		}
		return errString("no STATUS= about the network config yet")
	})
	if err != nil {
		t.Fatalf("%v; received %q", err, n.received())
	}
	if c := n.count("READY=1"); c != 0 {
		t.Fatalf("READY=1 sent while waiting for the network config")
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	err = netns.Poll(10*time.Second, func() error {
		if n.count("READY=1") != 1 {
			return errString("no READY=1")
		}
		if n.count("WATCHDOG=1") < 3 {
			return errString("fewer than 3 WATCHDOG=1")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v; received %q", err, n.received())
	}
	n.mu.Lock()
	readyOK := n.readyOK != nil && *n.readyOK
	n.mu.Unlock()
	if !readyOK {
		t.Errorf("READY=1 arrived before the subnet file was written")
	}
	if _, err := h.Kernel(device); err != nil {
		t.Errorf("ready without a device: %v", err)
	}

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(10 * time.Second); err != nil {
		t.Fatalf("vtepd after SIGTERM: %v", err)
	}
	if n.count("STOPPING=1") != 1 {
		t.Errorf("no STOPPING=1 on SIGTERM; received %q", n.received())
	}
}

type errString string

func (e errString) Error() string { return string(e) }
