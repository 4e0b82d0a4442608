package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

var (
	specOnce   sync.Once
	specRouter routers.Router
	specErr    error
)

// loadSpec loads Cloud Hypervisor's OpenAPI description once.
func loadSpec(t testing.TB) routers.Router {
	t.Helper()
	specOnce.Do(func() {
		doc, err := openapi3.NewLoader().LoadFromFile("testdata/cloud-hypervisor.yaml")
		if err != nil {
			specErr = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			specErr = err
			return
		}
		specRouter, specErr = legacy.NewRouter(doc)
	})
	if specErr != nil {
		t.Fatalf("loading the OpenAPI description: %v", specErr)
	}
	return specRouter
}

// vmmUnderTest is a vio API server on a temporary socket, driving a real
// vmm.Controller whose VMs are vmmtest doubles.
type vmmUnderTest struct {
	sock    string
	ctl     *vmm.Controller
	builder *vmmtest.Builder
	srv     *api.Server
	served  chan error
	kernel  string
}

func startVMM(t *testing.T) *vmmUnderTest {
	t.Helper()
	return startVMMIn(t, t.TempDir())
}

func startVMMIn(t *testing.T, dir string) *vmmUnderTest {
	t.Helper()
	v := &vmmUnderTest{sock: filepath.Join(dir, "api.sock"), builder: vmmtest.NewBuilder(), served: make(chan error, 1),
		kernel: filepath.Join(dir, "vmlinuz")}
	if err := os.WriteFile(v.kernel, []byte("never booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	v.ctl = vmm.NewController(v.builder.Build, nil)
	v.ctl.SetRestore(v.builder.Restore)
	l, err := api.Listen(v.sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	v.srv = api.NewServer(v.ctl, nil)
	go func() { v.served <- v.srv.Serve(l) }()
	t.Cleanup(func() {
		v.srv.Close()
		v.ctl.Delete()
		for _, m := range v.builder.Machines() {
			if err := m.Err(); err != nil {
				t.Error(err)
			}
		}
	})
	return v
}

// specClient sends requests to a vio API server and checks every request
// and every answer against Cloud Hypervisor's OpenAPI description, and the
// HTTP properties clients rely on (JSON content type, a length, one sentence
// in every error).
type specClient struct {
	t      *testing.T
	router routers.Router
	http   *http.Client
	reused int // requests that went over an already open connection
}

func newSpecClient(t *testing.T, sock string) *specClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &specClient{t: t, router: loadSpec(t), http: &http.Client{Transport: tr}}
}

type answer struct {
	status int
	body   []byte
	reqErr error // what the OpenAPI description says of the request
}

// errorSentence returns the sentence of an error answer.
func (a answer) errorSentence() string {
	var e struct {
		Error string `json:"error"`
	}
	json.Unmarshal(a.body, &e)
	return e.Error
}

func (c *specClient) do(method, endpoint string, body []byte) answer {
	return c.doType(method, endpoint, body, "application/json")
}

func (c *specClient) doType(method, endpoint string, body []byte, ctype string) answer {
	c.t.Helper()
	url := "http://localhost/api/v1/" + endpoint
	newReq := func() *http.Request {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, url, rd)
		if err != nil {
			c.t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", ctype)
		}
		return req
	}
	var a answer
	// The request, as the description sees it.
	vreq := newReq()
	route, params, err := c.router.FindRoute(vreq)
	var reqInput *openapi3filter.RequestValidationInput
	if err != nil {
		a.reqErr = err
	} else {
		reqInput = &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route}
		a.reqErr = openapi3filter.ValidateRequest(context.Background(), reqInput)
	}

	req := newReq()
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			if i.Reused {
				c.reused++
			}
		},
	}))
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, endpoint, err)
	}
	a.body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.t.Fatal(err)
	}
	a.status = resp.StatusCode

	// HTTP properties every answer must have.
	if len(a.body) > 0 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			c.t.Errorf("%s %s: Content-Type %q on a body, want application/json", method, endpoint, ct)
		}
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(a.body)) {
			c.t.Errorf("%s %s: Content-Length %q for %d bytes", method, endpoint, resp.Header.Get("Content-Length"), len(a.body))
		}
	}
	if a.status >= 400 {
		s := a.errorSentence()
		if s == "" || strings.Contains(s, "\n") {
			c.t.Errorf("%s %s: status %d without a one-sentence JSON error: %q", method, endpoint, a.status, a.body)
		}
	}

	// The answer, as the description sees it. A success must be one the
	// description documents; an error status it does not list (400 for a
	// bad vm.create body, 413, 501) is allowed, since the description
	// documents only some errors, but if it lists the status the body
	// must fit.
	if reqInput != nil {
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: reqInput,
			Status:                 a.status,
			Header:                 resp.Header,
			Body:                   io.NopCloser(bytes.NewReader(a.body)),
			Options:                &openapi3filter.Options{IncludeResponseStatus: a.status < 400},
		}
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			c.t.Errorf("%s %s: answer %d %s does not fit the OpenAPI description: %v", method, endpoint, a.status, a.body, err)
		}
	}
	return a
}

// ok sends a request the description accepts and expects status.
func (c *specClient) ok(method, endpoint string, body []byte, status int) answer {
	c.t.Helper()
	a := c.do(method, endpoint, body)
	if a.reqErr != nil {
		c.t.Errorf("%s %s: the request does not fit the OpenAPI description: %v", method, endpoint, a.reqErr)
	}
	if a.status != status {
		c.t.Fatalf("%s %s: status %d (%s), want %d", method, endpoint, a.status, a.body, status)
	}
	return a
}

func (c *specClient) state(want vmm.State) map[string]any {
	c.t.Helper()
	a := c.ok("GET", "vm.info", nil, 200)
	var info struct {
		State  string         `json:"state"`
		Config map[string]any `json:"config"`
	}
	if err := json.Unmarshal(a.body, &info); err != nil {
		c.t.Fatal(err)
	}
	if info.State != string(want) {
		c.t.Fatalf("vm.info state %q, want %q", info.State, want)
	}
	return info.Config
}
