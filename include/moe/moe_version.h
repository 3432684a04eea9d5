/* moed's version, and the versions of the formats it speaks.
 * Public: installed with moeclient.h. */
#ifndef MOE_VERSION_H
#define MOE_VERSION_H

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
#define MOE_VERSION_STRING "0.1.0"

#endif
