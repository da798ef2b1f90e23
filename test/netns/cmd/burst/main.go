// Command burst sends one small UDP datagram to each of many addresses, as
// fast as it can (a miss storm for the lab) or paced (misses one at a time). Run it inside a lab namespace
// with `ip netns exec`; it prints a JSON summary.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

type summary struct {
	Sent    int    `json:"sent"`
	Errors  int    `json:"errors"`
	First   string `json:"first_error,omitempty"`
	Elapsed string `json:"elapsed"`
}

func main() {
	start := flag.String("start", "", "first destination address")
	count := flag.Int("count", 1000, "number of consecutive addresses")
	port := flag.Int("port", 9, "UDP destination port (9: discard)")
	interval := flag.Duration("interval", 0, "pause between datagrams (0: as fast as possible)")
	flag.Parse()
	first, err := netip.ParseAddr(*start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "burst: --start %q: want an IPv4 or IPv6 address\n", *start)
		os.Exit(2)
	}
	network := "udp4"
	if first.Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "burst:", err)
		os.Exit(1)
	}
	defer conn.Close()

	var s summary
	payload := []byte("vtepd-burst")
	t0 := time.Now()
	a := first
	for i := 0; i < *count; i++ {
		_, err := conn.WriteToUDPAddrPort(payload, netip.AddrPortFrom(a, uint16(*port)))
		if err != nil {
			// Over gc_thresh3 the kernel cannot even create the neighbour
			// entry and says so here.
			s.Errors++
			if s.First == "" {
				s.First = err.Error()
			}
		} else {
			s.Sent++
		}
		a = a.Next()
		if *interval > 0 {
			time.Sleep(*interval)
		}
	}
	s.Elapsed = time.Since(t0).String()
	json.NewEncoder(os.Stdout).Encode(s)
}
