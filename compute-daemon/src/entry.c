/*
 * entry.c -- the plain C program's main(), for `make -C compute-daemon`.
 * The Rust `compute-daemon` binary calls wc_daemon_main itself.
 */
#define _GNU_SOURCE

#include "weaver_compute.h"

int main(int argc, char **argv)
{
    return wc_daemon_main(argc, argv);
}
