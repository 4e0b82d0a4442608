package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client talks to a VMM's API socket: vio's, or Cloud Hypervisor's.
type Client struct {
	http *http.Client
}

// NewClient returns a Client for the socket at path. It keeps one
// connection alive between requests, as Kata's client does.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: time.Minute,
	}
	return &Client{http: &http.Client{Transport: tr}}
}

// StatusError is an answer other than 2xx; Msg is the server's sentence.
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Msg, e.Status)
}

// Do sends one request to endpoint (e.g. "vm.info") with body (nil for
// none) and returns the answer's body. A non-2xx answer is a *StatusError
// carrying the server's sentence.
func (c *Client) Do(ctx context.Context, method, endpoint string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+prefix+endpoint, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := string(bytes.TrimSpace(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return b, &StatusError{Status: resp.StatusCode, Msg: msg}
	}
	return b, nil
}

// Close drops the kept connection.
func (c *Client) Close() { c.http.CloseIdleConnections() }
