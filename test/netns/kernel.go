package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab's kernel work goes through netlink, one socket per namespace,
// rather than an `ip` process per step: a host is a dozen requests on
// sockets the lab already holds, not a dozen fork-execs.

// netnsDir is where named namespaces live, as `ip netns` keeps them.
const netnsDir = "/run/netns"

// nsConn is one namespace of the lab: a handle on it and a netlink socket
// in it. Requests on the socket act in that namespace, whichever thread
// sends them.
type nsConn struct {
	name string
	fd   netns.NsHandle
	nl   *netlink.Handle
}

func (c *nsConn) close() {
	c.nl.Close()
	c.fd.Close()
}

// link looks up a link of the namespace by name.
func (c *nsConn) link(name string) (netlink.Link, error) {
	l, err := c.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netns: %s in %s: %w", name, c.name, err)
	}
	return l, nil
}

// addAddrs puts addresses on a link.
func (c *nsConn) addAddrs(link netlink.Link, addrs ...netip.Prefix) error {
	for _, a := range addrs {
		if err := c.nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil {
			return fmt.Errorf("netns: address %s on %s in %s: %w", a, link.Attrs().Name, c.name, err)
		}
	}
	return nil
}

// up sets a link up.
func (c *nsConn) up(link netlink.Link) error {
	if err := c.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("netns: set %s up in %s: %w", link.Attrs().Name, c.name, err)
	}
	return nil
}

// defaultRoute routes everything via gw, out of link.
func (c *nsConn) defaultRoute(link netlink.Link, gw netip.Addr) error {
	if err := c.nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("netns: default route via %s in %s: %w", gw, c.name, err)
	}
	return nil
}

// sysctl sets a sysctl of the namespace, named as sysctl(8) takes it:
// net.ipv4.ip_forward, or with slashes where a part holds a dot
// (net/ipv4/neigh/flannel.1/app_solicit).
func (c *nsConn) sysctl(name, value string) error {
	return setSysctl(c.name, name, value)
}

func setSysctl(ns, name, value string) error {
	path := name
	if !strings.Contains(name, "/") {
		path = strings.ReplaceAll(name, ".", "/")
	}
	// /proc/sys/net is the namespace of the thread that opens it.
	return Do(ns, func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns: sysctl %s=%s in %s: %w", name, value, ns, err)
		}
		return nil
	})
}

// waitOperUp waits until the links named are operationally up. A link set
// up starts carrying packets only once the kernel's link watcher has
// attached its queueing discipline, which it may do up to a second later:
// a first packet sent before that is dropped before any miss, and a test
// of first packets would blame vtepd.
func (c *nsConn) waitOperUp(names ...string) error {
	return poll(5*time.Second, func() error {
		for _, n := range names {
			l, err := c.link(n)
			if err != nil {
				return err
			}
			if st := l.Attrs().OperState; st != netlink.OperUp {
				return fmt.Errorf("netns: %s in %s is %s, not up", n, c.name, st)
			}
		}
		return nil
	})
}

// veth makes a veth pair, one end in each namespace given, and returns
// them as seen there. A zero mtu leaves the kernel's.
func veth(a *nsConn, aName string, b *nsConn, bName string, mtu int) (netlink.Link, netlink.Link, error) {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: mtu, Namespace: netlink.NsFd(a.fd)},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.fd),
		PeerMTU:       uint32(mtu),
	}
	// Sent from b's socket, with both ends placed explicitly: nothing is
	// created in the namespace the test runs in, even for a moment.
	if err := b.nl.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("netns: veth %s in %s, %s in %s: %w", aName, a.name, bName, b.name, err)
	}
	la, err := a.link(aName)
	if err != nil {
		return nil, nil, err
	}
	lb, err := b.link(bName)
	if err != nil {
		return nil, nil, err
	}
	return la, lb, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// shareRunDir makes /run/netns a shared mount, as `ip netns add` does, so
// that deleting a namespace there deletes it in every mount namespace too:
// a process started by `ip netns exec` (a mount namespace of its own)
// holds no copy that keeps a deleted namespace alive.
var shareRunDir = sync.OnceValue(func() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	for made := false; ; made = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if err != unix.EINVAL || made {
			return fmt.Errorf("netns: make %s a shared mount: %w", netnsDir, err)
		}
		// Not a mount point yet: make it one, then shared.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("netns: bind %s: %w", netnsDir, err)
		}
	}
})

// elsewhere runs fn on an OS thread of its own that enter has moved to
// another network namespace (ns names it in errors), then moves the thread
// back to the namespace it was in. If it cannot, the thread stays locked
// and ends with its goroutine, rather than run others in a lab namespace.
// Threads must not end otherwise: a lab process forked from one has
// Pdeathsig, which the kernel sends when the forking thread, not the
// process, exits.
func elsewhere(enter, fn func() error, ns string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			// enter may have moved the thread before it failed.
			if rerr := netns.Set(orig); rerr != nil {
				errc <- errors.Join(err, fmt.Errorf("netns: leave %s: %w", ns, rerr))
				return
			}
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("netns: leave %s: %w", ns, rerr))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// createNamespace makes namespace name, as `ip netns add` does: a new
// network namespace bind-mounted at /run/netns/name.
func createNamespace(name string) (netns.NsHandle, error) {
	if err := shareRunDir(); err != nil {
		return netns.None(), err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return netns.None(), fmt.Errorf("netns: create %s: %w", name, err)
	}
	f.Close()
	err = elsewhere(
		func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("netns: unshare for %s: %w", name, err)
			}
			return nil
		},
		func() error {
			self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
			if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("netns: bind %s: %w", name, err)
			}
			return nil
		}, name)
	if err != nil {
		os.Remove(path)
		return netns.None(), err
	}
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("netns: open %s: %w", name, err)
	}
	return fd, nil
}

// openNamespace returns a handle and a netlink socket for namespace name.
func openNamespace(name string, fd netns.NsHandle) (*nsConn, error) {
	nl, err := netlink.NewHandleAt(fd, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netns: netlink socket in %s: %w", name, err)
	}
	return &nsConn{name: name, fd: fd, nl: nl}, nil
}

// namespacesNamed lists the lab namespaces whose name starts with prefix.
func namespacesNamed(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: list %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// nsID identifies a network namespace as `ip netns pids` does: by the
// device and inode of its file.
type nsID struct{ dev, ino uint64 }

func nsIDOf(path string) (nsID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// pidsIn returns the processes (other than this one) in any of the
// namespaces named.
func pidsIn(names []string) []int {
	want := map[nsID]bool{}
	for _, n := range names {
		if id, ok := nsIDOf(filepath.Join(netnsDir, n)); ok {
			want[id] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if id, ok := nsIDOf(filepath.Join("/proc", e.Name(), "ns/net")); ok && want[id] {
			out = append(out, pid)
		}
	}
	return out
}

// deleteNamespaces kills what still runs in the namespaces named and
// deletes them, all at once: the kernel frees namespaces in batches.
func deleteNamespaces(names []string) error {
	// A process still in a namespace would keep it alive, anonymous,
	// after its name is gone: a vtepd talking to a dead etcd forever.
	for range 50 {
		pids := pidsIn(names)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(netnsDir, n)
			if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				errs[i] = fmt.Errorf("netns: unmount %s: %w", n, err)
				return
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs[i] = fmt.Errorf("netns: delete %s: %w", n, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
