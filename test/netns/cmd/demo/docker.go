package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// dropIn is vtepd's docker.service drop-in; `make demo` runs from the
// repository's root.
const dropIn = "contrib/systemd/docker.service.d/vtepd.conf"

// runDocker is the demo with real engines: on every host vtepd first, then
// dockerd with the options vtepd's systemd drop-in derives from the subnet
// file, then `docker run`; the first ping between containers of two hosts
// waits for vtepd to answer the kernel's miss.
func runDocker(nhosts int, keep bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the lab needs root (network namespaces, dockerd): run `sudo make demo DOCKER=1`")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "vtepd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step("building vtepd, the lab's embedded etcd and a container image (busybox-static; nothing is pulled)")
	bins, err := netns.Build(dir, netns.BuildOptions{})
	if err != nil {
		return err
	}
	image, err := netns.BuildDockerImage(dir)
	if err != nil {
		return err
	}
	lab, err := netns.New(netns.Options{Name: "vtdemo", Dir: dir, Bin: bins})
	if err != nil {
		return err
	}
	docker, err := netns.NewDocker(lab, image)
	if err != nil {
		lab.Close()
		return err
	}
	defer func() {
		step("cleaning up: containers, dockerds and what they made, namespaces vtdemo-*")
		for _, err := range []error{docker.Close(), lab.Close()} {
			if err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
			}
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

	step("on %d hosts: vtepd --ip-masq, then dockerd with what `vtepd docker-opts` makes of the subnet file", nhosts)
	var wg sync.WaitGroup
	defer wg.Wait()
	tailCtx, stopTail := context.WithCancel(ctx)
	defer stopTail()
	var containers []*netns.DockerContainer
	for i := 0; i < nhosts && ctx.Err() == nil; i++ {
		h, err := lab.AddHost()
		if err != nil {
			return err
		}
		// As on a fresh machine: dockerd turns forwarding on and sets the
		// FORWARD policy to DROP, which vtepd's rules let the overlay through.
		if err := h.Sysctl("net.ipv4.ip_forward", "0"); err != nil {
			return err
		}
		if _, err := h.StartVtepd("--ip-masq"); err != nil {
			return err
		}
		opts, err := netns.DockerOptsFromDropIn(dropIn, h, h.SubnetFile+".docker.env")
		if err != nil {
			return err
		}
		d, err := docker.Start(h, opts...)
		if err != nil {
			return err
		}
		fmt.Printf("  %s: vtepd ready; dockerd %s\n", h.Name, strings.Join(opts, " "))
		name := fmt.Sprintf("c%d", h.Index)
		c, err := d.Run(name, "sleep", "86400")
		if err != nil {
			return err
		}
		fmt.Printf("  %s: docker run -d --name %s %s sleep 86400   -> %s\n", h.Name, name, netns.DockerImage, c.Addr)
		containers = append(containers, c)
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

	step("docker exec: each container pings the others; the first packet waits on its host's miss, answered by vtepd")
	for _, from := range containers {
		for _, to := range containers {
			if from == to || ctx.Err() != nil {
				continue
			}
			out, _ := from.DockerExec("ping", "-c2", "-W1", to.Addr.String()) // exits 1 on loss: the output says
			time.Sleep(100 * time.Millisecond)                                // let the miss lines print first
			fmt.Printf("  %s$ docker exec %s ping -c2 %s\n", from.Host.Name, from.Name, to.Addr)
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.Contains(line, "bytes from") || strings.Contains(line, "packets transmitted") {
					fmt.Printf("      %s\n", line)
				}
			}
		}
	}

	h1 := lab.Hosts()[0]
	step("%s's firewall as dockerd left it, with vtepd's rules (they move from FORWARD into DOCKER-USER within 5 s of dockerd making it)", h1.Name)
	for _, chain := range []string{"FORWARD", "DOCKER-USER"} {
		out, err := h1.Exec("iptables", "-S", chain)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			fmt.Printf("  %s\n", line)
		}
	}

	if keep {
		step("lab left running; try `ip netns exec vtdemo-h1 iptables -S DOCKER-USER`. Ctrl-C to clean up")
		<-ctx.Done()
	}
	stopTail()
	return nil
}
