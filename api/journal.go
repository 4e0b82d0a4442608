package api

import (
	"errors"
	"net/http"

	"github.com/viovmm/vio/block/journal"
)

// diskJournalRequest is vio.disk-journal's body: an operation on a journal
// node of a disk graph (docs/journal.md).
type diskJournalRequest struct {
	Node string `json:"node"`
	journal.Request
}

func (s *Server) diskJournal(w http.ResponseWriter, r *http.Request) error {
	var req diskJournalRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return errorf(http.StatusBadRequest, "vio.disk-journal needs the journal node's name (node)")
	}
	st, err := s.ctl.DiskJournal(req.Node, req.Request)
	if errors.Is(err, journal.ErrBadRequest) || errors.Is(err, journal.ErrNoPoint) {
		return errorf(http.StatusBadRequest, "%s", err)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
