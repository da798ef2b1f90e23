// Command minresponder is the least a miss responder can do, for `make
// bench` to measure the floor under vtepd: it answers every L3 miss on one
// device for addresses of one subnet with one neighbour write to one MAC,
// and nothing else: no lease table, no FDB, no checks, no logging. Whatever
// it costs on a machine, no user-space responder costs less there.
//
// It times each answer as vtepd does (from the notification's receipt to
// the kernel's ack) and, on SIGTERM, prints the 50th and 99th percentiles
// as JSON: {"answered":N,"p50_us":...,"p99_us":...}.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dev := flag.String("dev", "flannel.1", "VXLAN device")
	macFlag := flag.String("mac", "", "VTEP MAC every answer points at")
	prefix := flag.String("prefix", "", "answer misses for addresses in this prefix only")
	flag.Parse()
	mac, err := net.ParseMAC(*macFlag)
	subnet, perr := netip.ParsePrefix(*prefix)
	ifi, ierr := net.InterfaceByName(*dev)
	if err != nil || perr != nil || ierr != nil || len(mac) != 6 {
		fmt.Fprintln(os.Stderr, "minresponder: need --dev, --mac and --prefix:", err, perr, ierr)
		os.Exit(2)
	}
	lat := make([]time.Duration, 0, 1<<16)
	var mu sync.Mutex
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-term
		mu.Lock()
		slices.Sort(lat)
		pct := func(p int) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[min(len(lat)-1, len(lat)*p/100)]) / 1e3
		}
		fmt.Printf("{\"answered\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f}\n", len(lat), pct(50), pct(99))
		os.Exit(0)
	}()
	record := func(d time.Duration) {
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
	}
	if err := serve(ifi.Index, [6]byte(mac), subnet, record); err != nil {
		fmt.Fprintln(os.Stderr, "minresponder:", err)
		os.Exit(1)
	}
}

func serve(ifindex int, mac [6]byte, subnet netip.Prefix, record func(time.Duration)) error {
	rd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	if err := unix.Bind(rd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_NEIGH - 1)}); err != nil {
		return err
	}
	wr, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	if err := unix.Bind(wr, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	in, out, ack := make([]byte, 64<<10), make([]byte, 48), make([]byte, 4096)
	ne := binary.NativeEndian
	to := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for seq := uint32(1); ; seq++ {
		n, _, err := unix.Recvfrom(rd, in, 0)
		if err != nil {
			continue // ENOBUFS and the like: the kernel asks again
		}
		received := time.Now()
		if n < 28 || ne.Uint16(in[4:6]) != unix.RTM_GETNEIGH || int(int32(ne.Uint32(in[20:24]))) != ifindex {
			continue
		}
		var dst netip.Addr
		for b := in[28:n]; len(b) >= 4; {
			l := int(ne.Uint16(b[0:2]))
			if l < 4 || l > len(b) {
				break
			}
			if ne.Uint16(b[2:4]) == unix.NDA_DST && l == 8 {
				dst = netip.AddrFrom4([4]byte(b[4:8]))
			}
			if al := (l + 3) &^ 3; al < len(b) {
				b = b[al:]
			} else {
				break
			}
		}
		if !subnet.Contains(dst) {
			continue
		}
		clear(out)
		ne.PutUint32(out[0:], 48)
		ne.PutUint16(out[4:], unix.RTM_NEWNEIGH)
		ne.PutUint16(out[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
		ne.PutUint32(out[8:], seq)
		out[16] = unix.AF_INET
		ne.PutUint32(out[20:], uint32(ifindex))
		ne.PutUint16(out[24:], unix.NUD_PERMANENT) // as vtepd answers
		ne.PutUint16(out[28:], 8)
		ne.PutUint16(out[30:], unix.NDA_DST)
		a := dst.As4()
		copy(out[32:36], a[:])
		ne.PutUint16(out[36:], 10)
		ne.PutUint16(out[38:], unix.NDA_LLADDR)
		copy(out[40:46], mac[:])
		if err := unix.Sendto(wr, out, 0, to); err != nil {
			return err
		}
		if _, _, err := unix.Recvfrom(wr, ack, 0); err != nil {
			return err
		}
		record(time.Since(received))
	}
}
