// Supervisor: placeholder, being written.
#include "modkit/modkit.hpp"
