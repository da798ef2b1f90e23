package netns_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
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
		code := m.Run()
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
	lab := newLab(t, name)
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lab.PutNetworkConfig(ctx, overlayConfig); err != nil {
		t.Fatalf("writing the network config: %v", err)
	}
	o := &overlay{lab: lab}
	for range n {
		o.addHost(t, extra)
	}
	return o
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
