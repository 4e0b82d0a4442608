package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

// FuzzServeHTTP sends arbitrary requests (a peer's bytes after HTTP
// parsing) to the API: every answer has a status, and every error answer a
// JSON sentence; nothing panics.
func FuzzServeHTTP(f *testing.F) {
	kernel := filepath.Join(f.TempDir(), "vmlinuz")
	os.WriteFile(kernel, []byte("x"), 0o644)
	f.Add("PUT", "vm.create", kataCreateBody(kernel))
	f.Add("PUT", "vm.create", []byte(`{"payload":{"kernel":"`+kernel+`"},"cpus":{"boot_vcpus":-1}}`))
	f.Add("PUT", "vm.add-disk", []byte(`{"path":"a","num_queues":99999999999}`))
	f.Add("PUT", "vm.add-net", []byte(`{"tap":"t","mac":"zz"}`))
	f.Add("PUT", "vm.remove-device", []byte(`{"id":"_disk0"}`))
	f.Add("PUT", "vm.remove-device", []byte(`{"id":""}`))
	f.Add("GET", "vm.info", []byte(nil))
	f.Add("PUT", "vm.boot", []byte(nil))
	f.Fuzz(func(t *testing.T, method, endpoint string, body []byte) {
		b := vmmtest.NewBuilder()
		ctl := vmm.NewController(b.Build, nil)
		defer ctl.Delete()
		s := api.NewServer(ctl, nil)
		for _, step := range []struct {
			m, e string
			b    []byte
		}{{method, endpoint, body}, {"PUT", "vm.boot", nil}, {method, endpoint, body}} {
			req := httptest.NewRequest(http.MethodGet, "http://localhost/", bytes.NewReader(step.b))
			req.Method, req.URL.Path = step.m, "/api/v1/"+step.e
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code < 200 || rec.Code > 599 {
				t.Fatalf("status %d", rec.Code)
			}
			if rec.Code >= 400 {
				var e struct {
					Error string `json:"error"`
				}
				if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
					t.Fatalf("%d without a JSON error: %q", rec.Code, rec.Body.Bytes())
				}
			}
		}
	})
}
