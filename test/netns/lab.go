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

	"github.com/vishvananda/netlink"
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
	conns      map[string]*nsConn
	procs      []*Process
	hosts      []*Host
	nextHost   int
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
	l := &Lab{Name: opts.Name, Dir: opts.Dir, Bin: opts.Bin, Underlay: opts.Name + "-ul", conns: map[string]*nsConn{}}
	if err := RemoveLeftovers(opts.Name); err != nil {
		return nil, err
	}
	ul, err := l.addNamespace(l.Underlay)
	if err != nil {
		l.Close()
		return nil, err
	}
	if err := ul.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		l.Close()
		return nil, fmt.Errorf("netns: bridge br0 in %s: %w", l.Underlay, err)
	}
	br, err := ul.link("br0")
	if err == nil {
		err = ul.addAddrs(br, netip.PrefixFrom(UnderlayBridge, UnderlayNet.Bits()))
	}
	if err == nil {
		err = ul.up(br)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// RemoveLeftovers kills the processes in, and deletes, every namespace whose
// name starts with name + "-".
func RemoveLeftovers(name string) error {
	names, err := namespacesNamed(name + "-")
	if err != nil {
		return err
	}
	return deleteNamespaces(names)
}

// Close stops every process and deletes every namespace of the lab. It is
// safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, namespaces, conns := l.procs, l.namespaces, l.conns
	l.procs, l.namespaces, l.conns = nil, nil, map[string]*nsConn{}
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
	for _, p := range procs {
		p.closeLog()
	}
	for _, c := range conns {
		c.close()
	}
	return deleteNamespaces(namespaces)
}

// addNamespace creates namespace ns with its loopback up, and keeps a
// netlink socket in it for the lab's later work there.
func (l *Lab) addNamespace(ns string) (*nsConn, error) {
	fd, err := createNamespace(ns)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, ns)
	l.mu.Unlock()
	c, err := openNamespace(ns, fd)
	if err != nil {
		fd.Close()
		return nil, err
	}
	l.mu.Lock()
	l.conns[ns] = c
	l.mu.Unlock()
	lo, err := c.link("lo")
	if err != nil {
		return nil, err
	}
	return c, c.up(lo)
}

// conn is the lab's socket in namespace ns.
func (l *Lab) conn(ns string) (*nsConn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.conns[ns]
	if !ok {
		return nil, fmt.Errorf("netns: %s is not a namespace of lab %s (or the lab is closed)", ns, l.Name)
	}
	return c, nil
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

// output runs a command and returns its combined output, which a failure's
// error holds too.
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
	oc, err := l.addNamespace(o.NS)
	if err != nil {
		return nil, err
	}
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return nil, err
	}
	router := netip.MustParseAddr("203.0.113.1")
	eth0, out0, err := veth(oc, "eth0", ul, "out0", 0)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return ul.addAddrs(out0, netip.PrefixFrom(router, 24)) },
		func() error { return ul.up(out0) },
		func() error { return ul.sysctl("net.ipv4.ip_forward", "1") },
		func() error { return oc.addAddrs(eth0, netip.PrefixFrom(o.Addr, 24)) },
		func() error { return oc.up(eth0) },
		func() error { return oc.defaultRoute(eth0, router) },
	}
	steps = append(steps,
		func() error { return ul.waitOperUp("out0") },
		func() error { return oc.waitOperUp("eth0") })
	if err := do(steps...); err != nil {
		return nil, err
	}
	return o, nil
}

// do runs steps in order until one fails.
func do(steps ...func() error) error {
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}
