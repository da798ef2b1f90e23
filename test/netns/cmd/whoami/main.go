// Command whoami tells a TCP client the address it was seen from: the lab's
// way to see whether a packet's source was rewritten on the way.
//
//	whoami --listen :7070          answer every connection with its source address
//	whoami --connect 10.5.1.2:7070 print the address the server saw
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to serve on")
	connect := flag.String("connect", "", "server to ask")
	timeout := flag.Duration("timeout", 3*time.Second, "how long a connection may take")
	flag.Parse()
	var err error
	switch {
	case *listen != "":
		err = serve(*listen)
	case *connect != "":
		err = ask(*connect, *timeout)
	default:
		err = fmt.Errorf("need --listen or --connect")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami:", err)
		os.Exit(1)
	}
}

func serve(addr string) error {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Fprintln(c, host)
		c.Close()
	}
}

func ask(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp4", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}
