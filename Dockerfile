# The single sluice image: the agent, the control plane and the CLI.
# docker build -t REGISTRY/sluice:TAG .
#
# The BPF objects are committed (dataplane/*_bpfel.o), so the build needs no
# clang, and the binary is static: it runs no external command.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /sluice ./cmd/sluice

# No shell, no package manager: just the binary, CA certificates and a
# nonroot user (65532) for the control plane. The agent runs as root.
FROM gcr.io/distroless/static-debian12
COPY --from=build /sluice /sluice
ENTRYPOINT ["/sluice"]
