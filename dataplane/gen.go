package dataplane

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sl_config -type sl_svc_key -type sl_svc_value -type sl_be_key -type sl_be_value -type sl_sock_origin -type sl_revnat_key -type sl_revnat_value -type sl_stat service ../bpf/service.c -- -I../bpf
