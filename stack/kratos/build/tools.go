//go:build tools

// Package build pins Ory Kratos as a dependency so scripts/stack/kratos.sh can build its command
// (`go build github.com/ory/kratos`) from the Go module proxy: `go install kratos@v1.3.1` is
// refused because kratos' own go.mod has a directory replace (./internal/client-go).
package build

import (
	_ "github.com/ory/kratos"
)
