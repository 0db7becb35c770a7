//go:build pprof

package main

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
)

// Profiling builds only (go build -tags pprof): with HSMKMS_PPROF=HOST:PORT
// in the environment, serve also answers net/http/pprof's endpoints there,
// so `make bench PROFILE=1` can take CPU and allocation profiles of the
// real server under load. Release builds carry none of this.
func init() {
	addr := os.Getenv("HSMKMS_PPROF")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			fmt.Fprintln(os.Stderr, "hsmkms: pprof:", err)
		}
	}()
}
