package api

import (
	"net/http"

	"github.com/viovmm/vio/vmm"
)

// diskMirror serves vio.disk-mirror: status, attach or remove on a running
// VM's mirror node (docs/disks.md); it answers the mirror's status.
func (s *Server) diskMirror(w http.ResponseWriter, r *http.Request) error {
	var req vmm.MirrorRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return errorf(http.StatusBadRequest, "vio.disk-mirror needs the mirror node's name (node)")
	}
	st, err := s.ctl.DiskMirror(req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
