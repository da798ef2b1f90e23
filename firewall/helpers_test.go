package firewall

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// Every namespace these tests make is named vtfw-…; a crashed run's are
// deleted when the next one starts. Nothing here touches the namespace the
// tests run in.
const nsPrefix = "vtfw-"

const nsDir = "/run/netns"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		entries, _ := os.ReadDir(nsDir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), nsPrefix) {
				if err := netns.DeleteNamed(e.Name()); err != nil {
					fmt.Fprintf(os.Stderr, "firewall tests: delete leftover namespace %s: %v\n", e.Name(), err)
				}
			}
		}
	}
	os.Exit(m.Run())
}

var nsSeq atomic.Int64

// newNS makes a network namespace for one test, deleted when the test ends
// (failed or not), and returns its path.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test makes a network namespace")
	}
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsSeq.Add(1))
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves this thread into the new namespace; left locked,
		// the thread ends with the goroutine instead of serving others.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("make namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return filepath.Join(nsDir, name)
}

// inNS runs fn in the namespace at path, the way the package runs iptables.
func inNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	p, err := openPlace(config{netnsPath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if err := p.do(fn); err != nil {
		t.Fatal(err)
	}
}

// run runs a command in the namespace at path and returns its output.
func run(t *testing.T, path string, name string, args ...string) string {
	t.Helper()
	var out []byte
	inNS(t, path, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	})
	return string(out)
}

// nftIn returns an nftables connection into the namespace at path.
func nftIn(t *testing.T, path string) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// showRuleset logs `nft list ruleset` of the namespace when nft is
// installed: what a person would look at. The tests do not need it.
func showRuleset(t *testing.T, path string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	t.Logf("nft list ruleset:\n%s", run(t, path, "nft", "list", "ruleset"))
}

// testLogger logs to the test and records, for assertions on what was
// logged.
func testLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// count says how many entries with message msg were logged.
func count(logs *observer.ObservedLogs, msg string) int {
	return logs.FilterMessage(msg).Len()
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// chainTexts lists the rules of a chain as render writes them.
func chainTexts(t *testing.T, c *nftables.Conn, fam nftables.TableFamily, table, chain string) []string {
	t.Helper()
	rules, err := c.GetRules(&nftables.Table{Family: fam, Name: table}, &nftables.Chain{Name: chain})
	if err != nil {
		t.Fatalf("list %s %s %s: %v", family(fam), table, chain, err)
	}
	var out []string
	for _, r := range rules {
		out = append(out, textOf(r))
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// watchGenerations watches the namespace's nftables transactions until the
// returned function is called, which returns them, one per generation.
func watchGenerations(t *testing.T, path string) func() []*nftables.MonitorEvents {
	t.Helper()
	mon := nftables.NewMonitor()
	events, err := nftIn(t, path).AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	var gens []*nftables.MonitorEvents
	got := make(chan struct{})
	go func() {
		defer close(got)
		for e := range events {
			gens = append(gens, e)
		}
	}()
	t.Cleanup(func() { mon.Close() })
	return func() []*nftables.MonitorEvents {
		// The kernel sends the events before it acknowledges a batch, so
		// those of every batch sent so far are queued on the monitor's
		// socket by now; the pause lets the reader take them.
		time.Sleep(100 * time.Millisecond)
		mon.Close()
		<-got
		return gens
	}
}
