package wire

import (
	"io"

	"github.com/hashicorp/go-hclog"
)

func hclogTo(w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Info, DisableTime: true})
}
