// Command vsockpeer is the guest half of e2e's vsock test, built static
// for a busybox guest (which has no vsock client). It listens on vsock
// port LPORT, then:
//
//  1. connects to the host (CID 2) port HPORT, sends SIZE random bytes and
//     shuts down its writing half; the host answers with the SHA-256 of
//     what it received (a line) and SIZE bytes of its own, whose SHA-256
//     the guest prints;
//  2. accepts one connection from the host, reads to EOF, answers with the
//     SHA-256 of what it read (a line) and SIZE random bytes of its own,
//     whose SHA-256 it prints.
//
// It prints "CHECK name ok|fail detail" lines and "SUM name hex" lines for
// the test to compare with what the host saw.
//
// Usage: vsockpeer LPORT HPORT SIZE
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// conn is a connected vsock stream on a raw descriptor (package net does
// not take AF_VSOCK descriptors).
type conn int

func (c conn) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(c), p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c conn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(int(c), p[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func check(name string, err error, detail string) {
	if err != nil {
		fmt.Printf("CHECK %s fail %v %s\n", name, err, detail)
		return
	}
	fmt.Printf("CHECK %s ok %s\n", name, detail)
}

// send writes size random bytes and returns their SHA-256.
func send(w io.Writer, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(w, h), rand.Reader, size); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// receive reads a sum line and size bytes; it returns both hex sums.
func receive(r io.Reader, size int64) (line, got string, err error) {
	br := bufio.NewReader(r)
	line, err = br.ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("sum line: %w", err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, br, size); err != nil {
		return "", "", fmt.Errorf("data: %w", err)
	}
	if n, _ := io.Copy(io.Discard, br); n != 0 {
		return "", "", fmt.Errorf("%d bytes beyond the data", n)
	}
	return strings.TrimSpace(line), hex.EncodeToString(h.Sum(nil)), nil
}

func guestInitiated(hport uint32, size int64) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	c := conn(fd)
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: hport}); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	sent, err := send(c, size)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return err
	}
	line, got, err := receive(c, size)
	if err != nil {
		return err
	}
	fmt.Printf("SUM guest-initiated-received %s\n", got)
	if line != sent {
		return fmt.Errorf("the host received sum %s, the guest sent %s", line, sent)
	}
	return nil
}

func hostInitiated(ln int, size int64) error {
	fd, _, err := unix.Accept(ln)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	c := conn(fd)
	defer unix.Close(fd)
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	fmt.Printf("SUM host-initiated-received %s\n", hex.EncodeToString(h.Sum(nil)))
	if _, err := fmt.Fprintf(c, "%x\n", h.Sum(nil)); err != nil {
		return err
	}
	sent, err := send(c, size)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	fmt.Printf("SUM host-initiated-sent %s\n", sent)
	return nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: vsockpeer LPORT HPORT SIZE")
		os.Exit(2)
	}
	lport, _ := strconv.ParseUint(os.Args[1], 10, 32)
	hport, _ := strconv.ParseUint(os.Args[2], 10, 32)
	size, _ := strconv.ParseInt(os.Args[3], 10, 64)
	ln, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err == nil {
		err = unix.Bind(ln, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(lport)})
	}
	if err == nil {
		err = unix.Listen(ln, 4)
	}
	check("vsock-listen", err, "")
	if err != nil {
		return
	}
	check("guest-initiated", guestInitiated(uint32(hport), size), "")
	check("host-initiated", hostInitiated(ln, size), "")
}
