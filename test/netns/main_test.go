package netns_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
	"golang.org/x/sync/semaphore"
)

// bins are built once per test binary, in TestMain.
var (
	bins     netns.Binaries
	buildErr error
)

// overlayConfig is the network config every lab test starts from.
const overlayConfig = `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// A run that crashed with the neighbour limits raised left them so.
		if err := netns.RestoreNeighbourLimits(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dir, err := os.MkdirTemp("", "vtepd-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bins, buildErr = netns.Build(dir, netns.BuildOptions{Race: true})
		if err := initNeighbourBudget(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		stop := watchNeighbourTable()
		code := m.Run()
		stop()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newLab returns a lab for t, or skips t when the lab cannot run here. The
// lab is closed when t ends, and on failure the tail of every process's log
// is printed first.
func newLab(t *testing.T, name string) *netns.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the netns lab needs root (network namespaces); run `sudo make test`")
	}
	if buildErr != nil {
		t.Fatalf("building the lab's binaries: %v", buildErr)
	}
	if _, ok := claimed.Load(t); !ok {
		claimNeighbours(t, defaultNeighbours)
	}
	lab, err := netns.New(netns.Options{Name: name, Dir: t.TempDir(), Bin: bins})
	if err != nil {
		t.Fatalf("creating the lab: %v", err)
	}
	t.Cleanup(func() {
		for _, name := range lab.RaceReports() {
			t.Errorf("%s reported a data race; see its log", name)
		}
		if t.Failed() {
			for _, h := range lab.Hosts() {
				if h.Vtepd != nil {
					t.Logf("--- last lines of vtepd on %s:\n%s", h.Name, h.Vtepd.Tail(30))
				}
			}
		}
		if err := lab.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	return lab
}

// overlay is a lab with etcd, the network config and some hosts, each with
// vtepd running and a container.
type overlay struct {
	lab   *netns.Lab
	hosts []*netns.Host
}

// newOverlay starts etcd, writes overlayConfig and brings up n hosts, each
// with a container holding extra fresh addresses.
func newOverlay(t *testing.T, name string, n, extra int) *overlay {
	t.Helper()
	o := startOverlay(t, name, overlayConfig)
	for range n {
		o.addHost(t, extra)
	}
	return o
}

// startOverlay starts a lab with etcd and the network config, no hosts yet.
func startOverlay(t *testing.T, name, config string) *overlay {
	t.Helper()
	lab := newLab(t, name)
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lab.PutNetworkConfig(ctx, config); err != nil {
		t.Fatalf("writing the network config: %v", err)
	}
	return &overlay{lab: lab}
}

// addHost adds a host, starts its vtepd, and gives it a container.
func (o *overlay) addHost(t *testing.T, extra int, vtepdArgs ...string) *netns.Host {
	t.Helper()
	h, err := o.lab.AddHost()
	if err != nil {
		t.Fatalf("adding a host: %v", err)
	}
	if _, err := h.StartVtepd(vtepdArgs...); err != nil {
		t.Fatalf("starting vtepd on %s: %v", h.Name, err)
	}
	if _, err := h.AddContainer(extra); err != nil {
		t.Fatalf("adding a container on %s: %v", h.Name, err)
	}
	o.hosts = append(o.hosts, h)
	return h
}

// median returns the median of ds.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// Lab tests run side by side (t.Parallel, within go test's -parallel
// limit), each in namespaces of its own. The one thing they share is the
// kernel's neighbour (ARP) table, one for every namespace, bounded by the
// root namespace's gc_thresh1-3 (128, 512, 1024 by default): above
// gc_thresh2 the kernel drops entries unused for 5 s, which tests counting
// entries would see, and at gc_thresh3 it creates none.
//
//   - The tests that fill it or change its limits (TestMissStorm,
//     TestNeighbourTableLimit, TestHostAnswerMode), or hold most of what
//     the others may share (TestCore), do not call t.Parallel: go test runs
//     those first, one at a time, before any parallel test starts, and
//     they call ownNeighbourTable. (So does TestDockerRestarts, for the
//     CPU: it times new connections.)
//   - The others share it within a budget below gc_thresh2: each lab
//     claims defaultNeighbours entries, a test whose labs hold more claims
//     what it needs with claimNeighbours, and a test waits until its claim
//     fits. The run prints at the end the peak of the table while tests
//     shared it, and whether the kernel had to collect garbage then.
//
// A new parallel test that holds more than defaultNeighbours entries (see
// the peak printed, with the test run alone) claims them.

// defaultNeighbours is a lab's usual share of the table: two or three
// hosts and a few dozen addresses pinged hold 10 to 30.
const defaultNeighbours = 32

// neighbourBudget is what parallel tests may claim of the table: gc_thresh2
// less room for the root namespace's own entries and for those of labs
// just closed, which the kernel frees in the background. Set in TestMain.
var (
	neighbourBudget   *semaphore.Weighted
	neighbourCapacity int64
	claimed           sync.Map // *testing.T that has claimed
)

func initNeighbourBudget() error {
	limits, err := netns.NeighbourLimits()
	if err != nil {
		return err
	}
	thresh2, err := strconv.ParseInt(limits[1], 10, 64)
	if err != nil {
		return fmt.Errorf("gc_thresh2 %q: %w", limits[1], err)
	}
	neighbourCapacity = max(thresh2-64, defaultNeighbours)
	neighbourBudget = semaphore.NewWeighted(neighbourCapacity)
	return nil
}

// claimNeighbours reserves n entries of the kernel's neighbour table for
// t's labs until t's labs are closed, waiting until they fit beside the
// other tests' claims. A test that holds more than defaultNeighbours calls
// it before newLab; a claim larger than the whole budget waits until t can
// run alone.
func claimNeighbours(t *testing.T, n int64) {
	t.Helper()
	if _, dup := claimed.LoadOrStore(t, true); dup {
		t.Fatal("test bug: claimNeighbours called twice, or after newLab")
	}
	n = min(n, neighbourCapacity)
	if err := neighbourBudget.Acquire(t.Context(), n); err != nil {
		t.Fatalf("waiting for room in the kernel's neighbour table: %v", err)
	}
	// Cleanups run last first: this one after the lab's, so the room is
	// given back once the lab is gone.
	t.Cleanup(func() {
		neighbourBudget.Release(n)
		claimed.Delete(t)
	})
}

// arpStats reads the kernel's ARP table size and how often it was forced
// to collect garbage (gc_thresh2 or 3 reached), from /proc/net/stat.
func arpStats() (entries, forcedGC int, err error) {
	b, err := os.ReadFile("/proc/net/stat/arp_cache")
	if err != nil {
		return 0, 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return 0, 0, fmt.Errorf("/proc/net/stat/arp_cache: %q", b)
	}
	head := strings.Fields(lines[0])
	col := func(name string) int {
		for i, h := range head {
			if h == name {
				return i
			}
		}
		return -1
	}
	ce, cf := col("entries"), col("forced_gc_runs")
	if ce < 0 || cf < 0 {
		return 0, 0, fmt.Errorf("/proc/net/stat/arp_cache has no entries or forced_gc_runs: %q", lines[0])
	}
	// One line per CPU: entries is the table's, forced_gc_runs the CPU's.
	for i, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != len(head) {
			return 0, 0, fmt.Errorf("/proc/net/stat/arp_cache line %q", l)
		}
		if i == 0 {
			e, _ := strconv.ParseInt(f[ce], 16, 64)
			entries = int(e)
		}
		g, _ := strconv.ParseInt(f[cf], 16, 64)
		forcedGC += int(g)
	}
	return entries, forcedGC, nil
}

// watchNeighbourTable samples the ARP table while the tests run, and the
// function it returns prints the peak and the forced collections: the
// headroom left for more parallel tests.
func watchNeighbourTable() (stop func()) {
	_, gc0, err := arpStats()
	if err != nil {
		return func() { fmt.Println("neighbour table not watched:", err) }
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var peak, sharedGC int
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		last := gc0
		for {
			// The tests that share the table, not those that fill it on
			// purpose.
			n, gc, err := arpStats()
			if err == nil && !tableOwned.Load() {
				peak = max(peak, n)
				sharedGC += gc - last
			}
			if err == nil {
				last = gc
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		limits, _ := netns.NeighbourLimits()
		fmt.Printf("kernel neighbour table while tests shared it: peak %d entries of a budget of %d (gc_thresh2 %s), %d forced garbage collections\n",
			peak, neighbourCapacity, limits[1], sharedGC)
		if sharedGC > 0 {
			fmt.Println("WARNING: the kernel dropped neighbour entries while tests shared its table: a test holds more than it claims (claimNeighbours)")
		}
	}
}

// ownNeighbourTable is for the tests that fill the kernel's neighbour
// table, change its limits or hold most of it, which do not call
// t.Parallel; they claim nothing of the shared budget. It waits until
// what earlier labs held is gone (the kernel frees a deleted namespace's
// entries in the background), and, when t ends, until what t's lab held is
// gone too, so that the parallel tests start with an empty table. Call it
// before newLab: cleanups run last first, so the wait follows the lab's
// deletion.
func ownNeighbourTable(t *testing.T) {
	t.Helper()
	claimed.Store(t, true) // it runs alone: no claim on the shared budget
	const empty = 64       // the root namespace's own, and a lab's underlay
	wait := func(when string) {
		err := netns.Poll(20*time.Second, func() error {
			n, _, err := arpStats()
			if err == nil && n > empty {
				err = fmt.Errorf("%d entries", n)
			}
			return err
		})
		if err != nil {
			// The table's count is the whole kernel's: entries held by
			// namespaces outside this run (a second lab run, a left-over
			// namespace) are counted too.
			t.Errorf("kernel neighbour table not emptied %s: %v (is another lab running on this machine? `ip netns list`)", when, err)
		}
	}
	wait("before the test")
	tableOwned.Store(true)
	t.Cleanup(func() {
		wait("after the test")
		tableOwned.Store(false)
		claimed.Delete(t)
	})
}

// tableOwned is set while a test that owns the neighbour table runs.
var tableOwned atomic.Bool
