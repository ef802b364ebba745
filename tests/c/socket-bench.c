/*
 * socket()+close() cost, for BENCHMARKS.md: the upgrade methods side by side.
 * Dynamically linked on purpose (calls libc's socket(), so `mptcpize run` can wrap it too).
 *
 * usage: socket-bench N
 * Prints "protocol=<SO_PROTOCOL of the first socket> ns_per_socket=<mean over N>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000;
	int proto = -1;
	socklen_t len = sizeof(proto);
	struct timespec a, b;

	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len);
	close(fd);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			perror("socket");
			return 1;
		}
		close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
	printf("protocol=%d ns_per_socket=%.0f\n", proto, ns);
	return 0;
}
