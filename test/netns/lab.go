package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Underlay addressing. TEST-NET-2 only: nothing here can reach a real network.
var (
	UnderlayNet    = netip.MustParsePrefix("198.51.100.0/24")
	UnderlayBridge = netip.MustParseAddr("198.51.100.1")
)

// Options configure a lab.
type Options struct {
	// Name prefixes every namespace; keep it short and unique per test.
	Name string
	// Dir holds logs, etcd data and subnet files.
	Dir string
	// Bin has the binaries the lab runs.
	Bin Binaries
}

// Lab is a set of namespaces and the processes running in them.
type Lab struct {
	Name     string
	Dir      string
	Bin      Binaries
	Underlay string // the underlay namespace

	mu         sync.Mutex
	namespaces []string
	procs      []*Process
	hosts      []*Host
	etcd       []*Etcd
}

// New creates the underlay namespace and its bridge, after removing whatever
// a crashed run of a lab with the same name left behind.
func New(opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netns: the lab needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("netns: the lab needs %s: %w", tool, err)
		}
	}
	l := &Lab{Name: opts.Name, Dir: opts.Dir, Bin: opts.Bin, Underlay: opts.Name + "-ul"}
	if err := RemoveLeftovers(opts.Name); err != nil {
		return nil, err
	}
	if err := l.addNamespace(l.Underlay); err != nil {
		l.Close()
		return nil, err
	}
	err := l.runAll(
		[]string{"ip", "-n", l.Underlay, "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "-n", l.Underlay, "addr", "add", UnderlayBridge.String() + "/24", "dev", "br0"},
		[]string{"ip", "-n", l.Underlay, "link", "set", "br0", "up"},
	)
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// RemoveLeftovers kills the processes in, and deletes, every namespace whose
// name starts with name + "-".
func RemoveLeftovers(name string) error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("netns: ip netns list: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		ns, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(ns, name+"-") {
			if err := deleteNamespace(ns); err != nil {
				return err
			}
		}
	}
	return nil
}

func deleteNamespace(ns string) error {
	// A process still in the namespace would keep it alive, anonymous,
	// after `ip netns del`: a vtepd talking to a dead etcd forever.
	for i := 0; i < 50; i++ {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		exec.Command("kill", append([]string{"-9"}, pids...)...).Run()
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("netns: ip netns del %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// Close stops every process and deletes every namespace of the lab. It is
// safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, namespaces := l.procs, l.namespaces
	l.procs, l.namespaces = nil, nil
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop(2 * time.Second)
		}()
	}
	wg.Wait()
	var errs []error
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := deleteNamespace(namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *Lab) addNamespace(ns string) error {
	if err := l.run("ip", "netns", "add", ns); err != nil {
		return err
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, ns)
	l.mu.Unlock()
	return l.run("ip", "-n", ns, "link", "set", "lo", "up")
}

// RaceReports returns, for every process of the lab whose log shows a data
// race report, its name.
func (l *Lab) RaceReports() []string {
	l.mu.Lock()
	procs := append([]*Process(nil), l.procs...)
	l.mu.Unlock()
	var out []string
	for _, p := range procs {
		if strings.Contains(p.Log(), "WARNING: DATA RACE") {
			out = append(out, p.Name)
		}
	}
	return out
}

// Hosts returns the hosts added so far.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// run runs a command and returns its combined output in the error.
func (l *Lab) run(args ...string) error {
	_, err := l.output(args...)
	return err
}

func (l *Lab) output(args ...string) (string, error) {
	return l.outputWithin(30*time.Second, args...)
}

// outputWithin is output with a timeout other than 30 s, for commands that
// run long on purpose.
func (l *Lab) outputWithin(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns: %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (l *Lab) runAll(cmds ...[]string) error {
	for _, c := range cmds {
		if err := l.run(c...); err != nil {
			return err
		}
	}
	return nil
}

// Start runs a command inside namespace ns, with its output in Dir/<name>.log.
func (l *Lab) Start(ns, name string, args ...string) (*Process, error) {
	logPath := filepath.Join(l.Dir, name+".log")
	p, err := startProcess(name, logPath, append([]string{"ip", "netns", "exec", ns}, args...))
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// poll calls cond until it returns nil or the deadline passes, and returns
// cond's last error.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Poll is poll for tests: it retries cond every 20ms until it succeeds or
// timeout passes.
func Poll(timeout time.Duration, cond func() error) error { return poll(timeout, cond) }

// Outside is a namespace standing for the Internet: a host outside the
// overlay, reached through the underlay namespace as the hosts' router.
// It has no route to the overlay, as a real one would not: a packet that
// reaches it with a container's source address cannot be answered.
type Outside struct {
	NS   string
	Addr netip.Addr
}

// OutsideAddr is the outside host's address (TEST-NET-3).
var OutsideAddr = netip.MustParseAddr("203.0.113.10")

// AddOutside adds the outside host: 203.0.113.10/24 on a veth to the
// underlay namespace (203.0.113.1), which routes between it and the hosts.
func (l *Lab) AddOutside() (*Outside, error) {
	o := &Outside{NS: l.Name + "-out", Addr: OutsideAddr}
	if err := l.addNamespace(o.NS); err != nil {
		return nil, err
	}
	err := l.runAll(
		[]string{"ip", "link", "add", "eth0", "netns", o.NS, "type", "veth", "peer", "name", "out0", "netns", l.Underlay},
		[]string{"ip", "-n", l.Underlay, "addr", "add", "203.0.113.1/24", "dev", "out0"},
		[]string{"ip", "-n", l.Underlay, "link", "set", "out0", "up"},
		[]string{"ip", "netns", "exec", l.Underlay, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		[]string{"ip", "-n", o.NS, "addr", "add", o.Addr.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", o.NS, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", o.NS, "route", "add", "default", "via", "203.0.113.1"},
	)
	if err != nil {
		return nil, err
	}
	return o, nil
}
