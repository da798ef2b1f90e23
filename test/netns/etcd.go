package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Etcd is one member of the lab's etcd, running in the underlay namespace.
type Etcd struct {
	Name      string
	Addr      netip.Addr
	ClientURL string
	DataDir   string

	lab  *Lab
	args []string
	proc *Process
}

// StartEtcd starts a single-member etcd on the underlay bridge's address.
func (l *Lab) StartEtcd() (*Etcd, error) {
	members, err := l.StartEtcdCluster(1)
	if err != nil {
		return nil, err
	}
	return members[0], nil
}

// StartEtcdCluster starts an n-member etcd cluster, members on 198.51.100.1
// up to .n, all in the underlay namespace, and waits until it serves.
func (l *Lab) StartEtcdCluster(n int) ([]*Etcd, error) {
	var members []*Etcd
	var initial []string
	for i := 1; i <= n; i++ {
		addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if addr != UnderlayBridge {
			if err := l.run("ip", "-n", l.Underlay, "addr", "add", addr.String()+"/24", "dev", "br0"); err != nil {
				return nil, err
			}
		}
		e := &Etcd{
			Name:      fmt.Sprintf("etcd%d", i),
			Addr:      addr,
			ClientURL: fmt.Sprintf("http://%s:2379", addr),
			DataDir:   filepath.Join(l.Dir, fmt.Sprintf("etcd%d.data", i)),
			lab:       l,
		}
		members = append(members, e)
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", e.Name, addr))
	}
	for _, e := range members {
		e.args = []string{l.Bin.LabEtcd,
			"--name", e.Name, "--data-dir", e.DataDir,
			"--listen-client-urls", e.ClientURL,
			"--listen-peer-urls", fmt.Sprintf("http://%s:2380", e.Addr),
			"--initial-cluster", strings.Join(initial, ","),
		}
		if err := e.Start(); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.etcd = append(l.etcd, members...)
	l.mu.Unlock()
	return members, l.WaitEtcd(30 * time.Second)
}

// Start starts (or restarts) the member with its data directory.
func (e *Etcd) Start() error {
	p, err := e.lab.Start(e.lab.Underlay, e.Name, e.args...)
	if err != nil {
		return err
	}
	e.proc = p
	return nil
}

// Kill stops the member at once, as a crash would.
func (e *Etcd) Kill() { e.proc.Kill() }

// Stop stops the member cleanly.
func (e *Etcd) Stop() error { return e.proc.Stop(5 * time.Second) }

// Endpoints returns the client URLs of every member.
func (l *Lab) Endpoints() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var eps []string
	for _, e := range l.etcd {
		eps = append(eps, e.ClientURL)
	}
	return eps
}

// WaitEtcd waits until etcd answers a linearizable read.
func (l *Lab) WaitEtcd(timeout time.Duration) error {
	c, err := l.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	return poll(timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Get(ctx, "/lab-ready")
		return err
	})
}

// EtcdClient returns a client for the lab's etcd. Its connections are
// opened inside the underlay namespace: the test process itself stays in the
// root namespace, where no lab address must ever be used.
func (l *Lab) EtcdClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   l.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(DialerIn(l.Underlay))},
	})
}

// DialerIn returns a TCP dialer whose sockets belong to namespace ns.
func DialerIn(ns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := Do(ns, func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
}

// Do runs fn on an OS thread that has entered namespace ns, then moves the
// thread back. A socket made in fn stays in ns when used from any other
// thread. If the thread cannot be moved back it is never unlocked, so the Go
// runtime retires it rather than run other goroutines in the lab's namespace.
func Do(ns string, fn func() error) error {
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
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: open %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", ns, err)
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

// PutNetworkConfig writes the network configuration under the default
// prefix.
func (l *Lab) PutNetworkConfig(ctx context.Context, config string) error {
	return l.Put(ctx, "/coreos.com/network/config", config)
}

// Put writes one key.
func (l *Lab) Put(ctx context.Context, key, value string) error {
	c, err := l.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Put(ctx, key, value)
	return err
}

// Etcd returns the lab's etcd members.
func (l *Lab) Etcd() []*Etcd {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Etcd(nil), l.etcd...)
}
