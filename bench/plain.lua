-- A GET of the URL's path, with wrk's own headers and any given with -H.
dofile("report.lua")
