// Command demo is `make demo`: a lab of three vtepd hosts on one machine,
// with an embedded etcd, showing misses answered live and traffic crossing.
// With -docker (`make demo DOCKER=1`) every host also runs a real dockerd
// started from vtepd's subnet file, and the containers are `docker run`'s.
// Everything runs in network namespaces it creates and deletes; run as root.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const network = `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}`

func main() {
	hosts := flag.Int("hosts", 3, "number of hosts")
	keep := flag.Bool("keep", false, "keep the lab running until Ctrl-C, to explore it with `ip netns exec vtdemo-h1 ...`")
	docker := flag.Bool("docker", false, "run a real dockerd on every host (Debian's docker.io) and `docker run` the containers")
	flag.Parse()
	if err := run(*hosts, *keep, *docker); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(nhosts int, keep, withDocker bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the lab needs root (network namespaces): run `sudo make demo`")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "vtepd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var image string
	if withDocker {
		step("building vtepd, the lab's embedded etcd and a container image (busybox-static: nothing is pulled)")
	} else {
		step("building vtepd and the lab's embedded etcd")
	}
	bins, err := netns.Build(dir, netns.BuildOptions{})
	if err != nil {
		return err
	}
	if withDocker {
		if image, err = netns.BuildDockerImage(dir); err != nil {
			return err
		}
	}
	lab, err := netns.New(netns.Options{Name: "vtdemo", Dir: dir, Bin: bins})
	if err != nil {
		return err
	}
	var docker *netns.Docker
	if withDocker {
		if docker, err = netns.NewDocker(lab, image); err != nil {
			lab.Close()
			return err
		}
	}
	defer func() {
		if docker != nil {
			step("cleaning up: containers, dockerds and what they made")
			if err := docker.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
			}
		}
		step("cleaning up: stopping processes, deleting namespaces vtdemo-*")
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
	}()

	step("underlay: bridge 198.51.100.1/24 in namespace %s; starting etcd on it", lab.Underlay)
	if _, err := lab.StartEtcd(); err != nil {
		return err
	}
	fmt.Printf("  etcdctl put /coreos.com/network/config '%s'\n", network)
	if err := lab.PutNetworkConfig(ctx, network); err != nil {
		return err
	}

	if withDocker {
		step("on %d hosts: vtepd --ip-masq, then dockerd with what vtepd's docker.service drop-in makes of the subnet file", nhosts)
	} else {
		step("starting vtepd on %d hosts (one namespace each, underlay 198.51.100.11 and up)", nhosts)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	tailCtx, stopTail := context.WithCancel(ctx)
	defer stopTail()
	var containers []*netns.DockerContainer
	for i := 0; i < nhosts; i++ {
		h, err := lab.AddHost()
		if err != nil {
			return err
		}
		if docker != nil {
			c, err := dockerHost(docker, h)
			if err != nil {
				return err
			}
			containers = append(containers, c)
		} else {
			if _, err := h.StartVtepd(); err != nil {
				return err
			}
			if _, err := h.AddContainer(2); err != nil {
				return err
			}
			env, _ := h.Subnet()
			fmt.Printf("  %s: vtepd ready, subnet file FLANNEL_SUBNET=%s FLANNEL_MTU=%d; container %s at %s\n",
				h.Name, env.Subnet, env.MTU, h.Container.NS, h.Container.Addr)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			showMisses(tailCtx, h)
		}()
	}

	step("the lease table in etcd (what every vtepd holds in memory)")
	if err := printLeases(ctx, lab); err != nil {
		return err
	}

	h1 := lab.Hosts()[0]
	if docker != nil {
		dockerPings(ctx, containers)
		showFirewall(h1)
		return waitIfKept(ctx, keep, stopTail)
	}

	step("every container pings every other one; each first packet goes through a miss on both hosts")
	for _, from := range lab.Hosts() {
		for _, to := range lab.Hosts() {
			if from == to || ctx.Err() != nil {
				continue
			}
			for _, target := range []netip.Addr{to.Container.Addr, to.Container.Extra[0]} {
				res, err := from.Container.Ping(target, "-c2", "-i0.2", "-W1")
				if err != nil {
					return err
				}
				time.Sleep(100 * time.Millisecond) // let the miss lines print first
				fmt.Printf("  ping %s(%s) -> %s(%s): %d/%d replies, RTT %s\n",
					from.Container.NS, from.Container.Addr, to.Container.NS, target, res.Received, res.Sent, rtts(res.RTTs))
			}
		}
	}

	step("what %s's kernel holds now: only the entries its traffic needed", h1.Name)
	k, err := h1.Kernel("flannel.1")
	if err != nil {
		return err
	}
	for _, n := range k.Neighbours {
		fmt.Printf("  neigh %s lladdr %s\n", n.IP, n.MAC)
	}
	for _, f := range k.FDB {
		fmt.Printf("  fdb   %s dst %s permanent\n", f.MAC, f.Dst)
	}
	for _, r := range k.Routes {
		fmt.Printf("  route %s dev flannel.1 scope link\n", r.Dst)
	}

	return waitIfKept(ctx, keep, stopTail)
}

// waitIfKept leaves the lab up until Ctrl-C if asked to, then stops the
// log tails.
func waitIfKept(ctx context.Context, keep bool, stopTail func()) error {
	if keep {
		step("lab left running; try `ip netns exec vtdemo-c1 ping 10.5.x.y`. Ctrl-C to clean up")
		<-ctx.Done()
	}
	stopTail()
	return nil
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func rtts(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond)))
	}
	return strings.Join(s, " ")
}

func printLeases(ctx context.Context, lab *netns.Lab) error {
	c, err := lab.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	prefix := store.SubnetsPrefix("/coreos.com/network")
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  SUBNET\tPUBLIC IP\tVTEP MAC\tTTL")
	for _, kv := range resp.Kvs {
		l, err := store.ParseLease(string(kv.Key[len(prefix):]), kv.Value)
		if err != nil {
			fmt.Fprintf(w, "  %s\t(invalid: %v)\n", kv.Key, err)
			continue
		}
		ttl := "-"
		if t, err := c.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
			ttl = (time.Duration(t.TTL) * time.Second).String()
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", l.Subnet, l.PublicIP, l.VtepMAC, ttl)
	}
	return w.Flush()
}

// showMisses follows h's vtepd log and prints each miss in the overlay as it
// is answered.
func showMisses(ctx context.Context, h *netns.Host) {
	f, err := os.Open(h.Vtepd.LogPath)
	if err != nil {
		return
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial string
	for ctx.Err() == nil {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			partial += line
			time.Sleep(20 * time.Millisecond)
			continue
		}
		line, partial = partial+line, ""
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil || e["msg"] != "miss" || e["outcome"] == "outside_overlay" {
			continue
		}
		subject := fmt.Sprint(e["ip"])
		if e["kind"] == "L2" {
			subject = fmt.Sprint(e["mac"])
		}
		how := fmt.Sprint(e["outcome"])
		if how == "answered" {
			how = fmt.Sprintf("answered: %s is on %s (VTEP %s), kernel writes: %v, %v",
				subject, e["vtep"], e["vtep_mac"], e["writes"], e["latency"])
		}
		fmt.Printf("  [%s vtepd] %s miss %-12s %-10s -> %s\n", h.Name, e["kind"], subject, e["state"], how)
	}
}
