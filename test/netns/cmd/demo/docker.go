package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// dropIn is vtepd's docker.service drop-in; `make demo` runs from the
// repository's root.
const dropIn = "contrib/systemd/docker.service.d/vtepd.conf"

// dockerHost sets h up as an operator sets up a Docker host: vtepd first,
// then dockerd with the options vtepd's systemd drop-in derives from the
// subnet file, then `docker run`. It returns the container.
func dockerHost(docker *netns.Docker, h *netns.Host) (*netns.DockerContainer, error) {
	// As on a fresh machine: dockerd turns forwarding on and sets the
	// FORWARD policy to DROP, which vtepd's rules let the overlay through.
	if err := h.Sysctl("net.ipv4.ip_forward", "0"); err != nil {
		return nil, err
	}
	if _, err := h.StartVtepd("--ip-masq"); err != nil {
		return nil, err
	}
	opts, err := netns.DockerOptsFromDropIn(dropIn, h, h.SubnetFile+".docker.env")
	if err != nil {
		return nil, err
	}
	d, err := docker.Start(h, opts...)
	if err != nil {
		return nil, err
	}
	fmt.Printf("  %s: vtepd ready; dockerd %s\n", h.Name, strings.Join(opts, " "))
	name := fmt.Sprintf("c%d", h.Index)
	c, err := d.Run(name, "sleep", "86400")
	if err != nil {
		return nil, err
	}
	fmt.Printf("  %s$ docker run -d --name %s %s sleep 86400   -> %s\n", h.Name, name, netns.DockerImage, c.Addr)
	return c, nil
}

// dockerPings has every container ping every other one with docker exec.
func dockerPings(ctx context.Context, containers []*netns.DockerContainer) {
	step("docker exec: each container pings the others; a first packet to a new address waits on its host's miss, which vtepd answers")
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
}

// showFirewall prints h's FORWARD and DOCKER-USER chains.
func showFirewall(h *netns.Host) {
	step("%s's firewall as dockerd left it, with vtepd's rules (moved from FORWARD into DOCKER-USER within 5 s of dockerd making it)", h.Name)
	for _, chain := range []string{"FORWARD", "DOCKER-USER"} {
		out, err := h.Exec("iptables", "-S", chain)
		if err != nil {
			fmt.Printf("  %v\n", err)
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			fmt.Printf("  %s\n", line)
		}
	}
}
