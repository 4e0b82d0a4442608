package api

import (
	"net/http"
)

// multipathRequest names the multipath node vio.disk-multipath reports on.
type multipathRequest struct {
	Node string `json:"node"`
}

// diskMultipath serves vio.disk-multipath: the state and counters of each
// path of a running VM's multipath node (docs/disks.md, "Multipath").
func (s *Server) diskMultipath(w http.ResponseWriter, r *http.Request) error {
	var req multipathRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return errorf(http.StatusBadRequest, "vio.disk-multipath needs the multipath node's name (node)")
	}
	st, err := s.ctl.DiskMultipath(req.Node)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
